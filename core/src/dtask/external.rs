//! Waiting for the outside world: named events ([`DTask::event`]) and suspensions resumed
//! by a token ([`DTask::suspend`]).

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::str::FromStr;
use std::task::Poll;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::cancel::{cancel_started, poll_claiming};
use super::{fail_now, DTask, LeafOp, Spec};
use crate::error::{Error, Failure, FailureKind};
use crate::protocol::codec::decode_value;
use crate::protocol::state::{Command, InstanceId, Seq};
use crate::step::with;

impl DTask<()> {
    /// Waits for the next external event named `name`, sent with
    /// [`Client::signal`](crate::Client::signal), and returns its value.
    ///
    /// The instance waits in its mailbox, taking no worker while it waits. Events are kept
    /// from the moment they are sent: one sent before the instance waits for it is
    /// delivered when it does, never lost and never delivered twice, and several events
    /// of one name are delivered in the order they were sent, one per wait. A value that
    /// does not decode as `T` fails the instance with a bad-input failure naming the event.
    ///
    /// It composes like any DTask: an approval that times out after seven days is
    /// `DTask::when_any(vec![DTask::event("approval").map(Some), DTask::delay(week).map(|_| None)])`.
    ///
    /// ```
    /// use dtasks::{dtask, DTask, Runtime, WorkerConfig};
    ///
    /// #[dtask]
    /// async fn wait_for_approval() -> bool {
    ///     DTask::event::<bool>("approval").await
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(wait_for_approval))?;
    /// let client = rt.client();
    /// let handle = client.start(wait_for_approval()).await?;
    /// client.signal(handle.id(), "approval", &true).await?;
    /// assert!(handle.result().await?);
    /// # Ok(()) }
    /// ```
    pub fn event<T: DeserializeOwned + Send + 'static>(
        name: impl Into<Cow<'static, str>>,
    ) -> DTask<T> {
        DTask::op(LeafOp::Event(name.into()))
    }

    /// Suspends the instance until a client resumes it with a value:
    /// `callback` receives a [`ResumeToken`] and sends it wherever the value will come
    /// from (an e-mail with a link, a webhook registration); whoever holds the token calls
    /// [`Client::resume`](crate::Client::resume) with the value, from any process, even
    /// after workers restarted.
    ///
    /// `callback` runs once, in the worker, when the suspension is first awaited (again
    /// only if that worker crashes before the suspension is durable: at least once, like
    /// [`DTask::run`]). A token resumes its suspension once; later resumes with the same
    /// token are dropped. A value that does not decode as `T` fails the instance with a
    /// bad-input failure.
    ///
    /// ```
    /// use dtasks::{dtask, DTask, ResumeToken, Runtime, WorkerConfig};
    /// use std::sync::Mutex;
    ///
    /// static OUTBOX: Mutex<Vec<ResumeToken>> = Mutex::new(Vec::new());
    ///
    /// #[dtask]
    /// async fn sign_off() -> String {
    ///     DTask::suspend(|token| async move {
    ///         OUTBOX.lock().unwrap().push(token); // e.g. e-mail a link holding the token
    ///     })
    ///     .await
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(sign_off))?;
    /// let client = rt.client();
    /// let handle = client.start(sign_off()).await?;
    /// let token = loop {
    ///     if let Some(t) = OUTBOX.lock().unwrap().pop() { break t; }
    ///     tokio::task::yield_now().await;
    /// };
    /// client.resume(&token, &"signed by Ada".to_string()).await?;
    /// assert_eq!(handle.result().await?, "signed by Ada");
    /// # Ok(()) }
    /// ```
    pub fn suspend<T, F, Fut>(callback: F) -> DTask<T>
    where
        T: DeserializeOwned + Send + 'static,
        F: FnOnce(ResumeToken) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mut callback = Some(callback);
        let mut sending: Option<Pin<Box<Fut>>> = None;
        let mut seq: Option<Seq> = None;
        DTask::from_future(
            std::future::poll_fn(move |cx| {
                let s = match seq {
                    Some(s) => s,
                    None => {
                        let claimed = with(|ex| {
                            let s = ex.claim(Command::Suspend)?;
                            let token = ResumeToken {
                                instance: ex.instance.clone(),
                                dtask: ex.dtask.clone(),
                                seq: s,
                            };
                            Some((s, s as usize >= ex.replayed, token))
                        });
                        let Some((s, new, token)) = claimed else {
                            return Poll::Pending;
                        };
                        seq = Some(s);
                        if new {
                            if let Some(cb) = callback.take() {
                                sending = Some(Box::pin(cb(token)));
                            }
                        }
                        s
                    }
                };
                if let Some(running) = sending.as_mut() {
                    match running.as_mut().poll(cx) {
                        Poll::Ready(()) => sending = None,
                        Poll::Pending => return Poll::Pending,
                    }
                }
                let value = with(|ex| match ex.result(s) {
                    Some(r) => Some(r),
                    None => {
                        ex.blocked += 1;
                        None
                    }
                });
                match value {
                    None => Poll::Pending,
                    Some((Ok(bytes), order)) => match decode_value::<T>(&bytes) {
                        Ok(v) => Poll::Ready((v, order)),
                        Err(e) => {
                            fail_now(Failure::new(
                                FailureKind::BadInput,
                                format!(
                                    "the value resumed into DTask::suspend at {s} does not \
                                     decode as {}: {e}",
                                    std::any::type_name::<T>()
                                ),
                            ));
                            Poll::Pending
                        }
                    },
                    Some((Err(f), _)) => {
                        fail_now(f);
                        Poll::Pending
                    }
                }
            }),
            Spec::Claim { catch: false },
        )
    }
}

impl<T: DeserializeOwned + Send + 'static> DTask<T> {
    /// Waits for this DTask at most `timeout`: `Some(value)` when it finishes first,
    /// `None` when a durable timer of `timeout` fires first (whichever was recorded first
    /// wins, as in [`DTask::when_any`]). The approval-or-timeout flow is one line:
    /// `DTask::event::<Approval>("approval").within(seven_days).await`.
    ///
    /// Works in both execution models. What lost to the timer is stopped: the children it
    /// started are cancelled (as by [`DTask::timeout`], whose `Err` this turns into
    /// `None`), and a wait for an event stops waiting, so that events sent later go to
    /// the next wait of that name.
    ///
    /// ```
    /// use std::time::Duration;
    /// use dtasks::{dtask, DTask, Runtime, WorkerConfig};
    ///
    /// #[dtask]
    /// async fn approve_or_expire() -> String {
    ///     let answer = DTask::event::<bool>("approval").within(Duration::from_millis(10));
    ///     match answer.await {
    ///         Some(true) => "approved".into(),
    ///         Some(false) => "rejected".into(),
    ///         None => "expired".into(),
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(approve_or_expire))?;
    /// assert_eq!(rt.client().call(approve_or_expire()).await?, "expired");
    /// # Ok(()) }
    /// ```
    pub fn within(self, timeout: std::time::Duration) -> DTask<Option<T>> {
        let mut task = self;
        let mut timer = DTask::<()>::delay(timeout);
        let spec = Spec::Within(Box::new(task.spec.clone()));
        let mut done: Option<(Result<T, Failure>, u32)> = None;
        let mut fired: Option<u32> = None;
        let mut claimed: Option<std::ops::Range<Seq>> = None;
        DTask::from_future(
            std::future::poll_fn(move |cx| {
                if done.is_none() {
                    if let Poll::Ready(v) =
                        poll_claiming(&mut claimed, |cx| task.poll_settled(cx), cx)
                    {
                        done = Some(v);
                    }
                }
                if fired.is_none() {
                    if let Poll::Ready(((), order)) = timer.poll_ordered(cx) {
                        fired = Some(order);
                    }
                }
                match (done.take(), fired) {
                    (Some((r, o)), f) if f.is_none_or(|f| o < f) => match r {
                        Ok(v) => Poll::Ready((Some(v), o)),
                        Err(failure) => {
                            fail_now(failure);
                            Poll::Pending
                        }
                    },
                    (_, Some(f)) => {
                        task.retire();
                        let reason = within_reason(timeout);
                        with(|ex| {
                            cancel_started(ex, claimed.clone().into_iter().flatten(), &reason)
                        });
                        Poll::Ready((None, f))
                    }
                    (d, None) => {
                        done = d;
                        Poll::Pending
                    }
                }
            }),
            spec,
        )
    }
}

/// Why the children of a task that lost to its `within` timer are cancelled.
pub(crate) fn within_reason(timeout: std::time::Duration) -> String {
    format!("did not finish within {} ms", timeout.as_millis())
}

/// The token of one [`DTask::suspend`]: pass it to
/// [`Client::resume`](crate::Client::resume) to resume the suspended instance with a value.
///
/// Opaque and serializable: its text form ([`fmt::Display`], [`FromStr`], and its serde
/// form) can be stored, put in a URL or an e-mail, and used from any process, before or
/// after workers restart.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct ResumeToken {
    instance: InstanceId,
    dtask: String,
    seq: Seq,
}

impl ResumeToken {
    /// The instance this token resumes.
    pub fn instance(&self) -> &InstanceId {
        &self.instance
    }

    pub(crate) fn dtask(&self) -> &str {
        &self.dtask
    }

    pub(crate) fn seq(&self) -> Seq {
        self.seq
    }
}

impl fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Instance ids hold no `/`; the DTask name goes last and may.
        write!(f, "{}/{}/{}", self.instance, self.seq, self.dtask)
    }
}

impl FromStr for ResumeToken {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::bad_input(format!("`{s}` is not a resume token"));
        let (instance, rest) = s.split_once('/').ok_or_else(bad)?;
        let (seq, dtask) = rest.split_once('/').ok_or_else(bad)?;
        let seq: Seq = seq.parse().map_err(|_| bad())?;
        if dtask.is_empty() {
            return Err(bad());
        }
        Ok(Self {
            instance: InstanceId::from_message(instance).map_err(|_| bad())?,
            dtask: dtask.to_string(),
            seq,
        })
    }
}

impl From<ResumeToken> for String {
    fn from(t: ResumeToken) -> String {
        t.to_string()
    }
}

impl TryFrom<String> for ResumeToken {
    type Error = Error;

    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_reads_back_from_its_text() {
        let t = ResumeToken {
            instance: InstanceId::new("order-1.3").unwrap(),
            dtask: "shop::approve/v2".into(),
            seq: 7,
        };
        let text = t.to_string();
        assert_eq!(text.parse::<ResumeToken>().unwrap(), t);
        let via_serde: ResumeToken =
            serde_json_like_roundtrip(&t).expect("a token survives its serde form");
        assert_eq!(via_serde, t);
        for bad in ["", "x", "x/1", "x/y/z", "bad id!/1/z", "x/1/"] {
            let e = bad.parse::<ResumeToken>().unwrap_err();
            assert!(e.is_bad_input(), "{bad}: {e}");
        }
    }

    fn serde_json_like_roundtrip(t: &ResumeToken) -> Option<ResumeToken> {
        let bytes = rmp_serde::to_vec(t).ok()?;
        rmp_serde::from_slice(&bytes).ok()
    }
}
