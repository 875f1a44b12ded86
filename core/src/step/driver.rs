//! Drives one step of an instance (either model) to quiescence.
//!
//! The instance's future is polled with a waker of our own. After a `Pending` poll:
//! - if the waker was woken, poll again;
//! - if some leaf future (a tokio timer, a socket, a spawned tokio task) holds a clone of
//!   the waker, local work is in progress: wait for the wake and poll again;
//! - otherwise, nothing local can ever wake the future: if a DTask operation is blocked on
//!   a distributed result, the instance suspends; if not, it is stuck.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Wake, Waker};

use std::future::Future;
use std::pin::Pin;

use tokio::sync::Notify;

use super::context::{enter, Exec};
use crate::error::{Failure, FailureKind};
use crate::protocol::state::Command;

/// The boxed future of a DTask body: its encoded output, or a failure.
pub(crate) type BodyFuture = Pin<Box<dyn Future<Output = Result<Vec<u8>, Failure>> + Send>>;

/// How a step ended.
#[derive(Debug)]
pub(crate) enum StepEnd {
    Completed(Vec<u8>),
    Suspended,
    Failed(Failure),
    /// The body asked to continue as a new run of itself with this input
    /// ([`DTask::continue_as_new`](crate::DTask::continue_as_new)).
    Continued(Vec<u8>),
}

struct Flag {
    woken: AtomicBool,
    notify: Notify,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.notify.notify_one();
    }
}

pub(crate) async fn drive(body: &mut BodyFuture, exec: &Arc<Mutex<Exec>>) -> StepEnd {
    let flag = Arc::new(Flag {
        woken: AtomicBool::new(false),
        notify: Notify::new(),
    });
    let waker = Waker::from(flag.clone());
    loop {
        flag.woken.store(false, Ordering::Release);
        lock(exec).blocked = 0;
        let polled = {
            let _guard = enter(exec.clone());
            let mut cx = Context::from_waker(&waker);
            std::panic::catch_unwind(AssertUnwindSafe(|| body.as_mut().poll(&mut cx)))
        };
        let decision = decide(polled, &mut lock(exec), &flag);
        match decision {
            Decision::Done(end) => return end,
            Decision::PollAgain => continue,
            Decision::WaitForWake => {
                // A wake since the check left a permit: no lost wake-up.
                flag.notify.notified().await;
            }
        }
    }
}

enum Decision {
    Done(StepEnd),
    PollAgain,
    WaitForWake,
}

type Polled = std::thread::Result<Poll<Result<Vec<u8>, Failure>>>;

fn decide(polled: Polled, ex: &mut Exec, flag: &Arc<Flag>) -> Decision {
    // `flag` plus the clone inside the driver's waker.
    const OWN_REFS: usize = 2;
    let end = match polled {
        Err(panic) => StepEnd::Failed(Failure::new(FailureKind::Panic, panic_message(&*panic))),
        Ok(Poll::Ready(_)) | Ok(Poll::Pending)
            if ex.continued.is_some() && ex.failure.is_none() =>
        {
            // The run ends here, whatever else is pending or in progress.
            StepEnd::Continued(ex.continued.take().unwrap_or_default())
        }
        Ok(Poll::Ready(result)) => {
            if let Some(f) = ex.failure.take() {
                StepEnd::Failed(f)
            } else if let Some(f) = unreached(ex) {
                StepEnd::Failed(f)
            } else {
                match result {
                    Ok(bytes) => StepEnd::Completed(bytes),
                    Err(f) => StepEnd::Failed(f),
                }
            }
        }
        Ok(Poll::Pending) => {
            if let Some(f) = ex.failure.take() {
                return Decision::Done(StepEnd::Failed(f));
            }
            if flag.woken.load(Ordering::Acquire) {
                return Decision::PollAgain;
            }
            if Arc::strong_count(flag) > OWN_REFS {
                return Decision::WaitForWake;
            }
            if ex.blocked == 0 {
                return Decision::Done(StepEnd::Failed(Failure::new(
                    FailureKind::Stuck,
                    "the DTask is pending on a future that holds no waker and on no \
                     distributed operation, so nothing can ever wake it (a \
                     `std::future::pending()`, or a DTask awaited through \
                     FuturesUnordered; use DTask::when_all / when_any instead)",
                )));
            }
            if let Some(i) = ex
                .journal
                .iter()
                .position(|e| e.cmd == Command::Run && e.result.is_none())
            {
                let seq = ex.base as usize + i;
                return Decision::Done(StepEnd::Failed(Failure::new(
                    FailureKind::Stuck,
                    format!(
                        "the DTask::run at journal position {seq} is pending without a \
                         waker, so it can never finish"
                    ),
                )));
            }
            match unreached(ex) {
                Some(f) => StepEnd::Failed(f),
                None => StepEnd::Suspended,
            }
        }
    };
    Decision::Done(end)
}

/// A replay that stops before issuing every recorded command has diverged.
fn unreached(ex: &Exec) -> Option<Failure> {
    if ex.snapshot.is_some() {
        // The snapshot model replays nothing.
        return None;
    }
    let issued = ex.next_seq as usize;
    if issued < ex.replayed {
        let cmd = &ex.journal[issued - ex.base as usize].cmd;
        return Some(Failure::new(
            FailureKind::NonDeterminism,
            format!(
                "at journal position {issued} the recorded command is `{cmd}` but replay \
                 issued no command there"
            ),
        ));
    }
    None
}

fn lock(exec: &Arc<Mutex<Exec>>) -> std::sync::MutexGuard<'_, Exec> {
    exec.lock().unwrap_or_else(|p| p.into_inner())
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-string payload".to_string()
    }
}
