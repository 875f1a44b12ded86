//! A snapshot-model machine written by hand against the API that `#[dtask(snapshot)]`
//! expands to: it runs, suspends, travels serialized in messages and resumes on the
//! in-memory runtime, through sequential child awaits, `when_all`, a timer and a chain of
//! children. Code between awaits runs exactly once (nothing is replayed).

use std::future::IntoFuture;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use dtasks::__private::snapshot as s;
use dtasks::__private::{BodyFuture, Registration};
use dtasks::{dtask, Call, DTask, Failure, Runtime, Status, WorkerConfig};

type TestResult = Result<(), Box<dyn std::error::Error>>;

#[dtask]
async fn add_one(x: u64) -> u64 {
    x + 1
}

#[dtask]
async fn middle(x: u64) -> u64 {
    add_one(x).await * 2
}

/// Counts how often the code before each await runs.
static BEFORE_AWAIT: AtomicUsize = AtomicUsize::new(0);

/// The call stub, as `#[dtask(snapshot)]` generates it for:
///
/// ```ignore
/// async fn hand_flow(n: u64) -> u64 {
///     let mut total = 0;
///     for i in 0..n {
///         BEFORE_AWAIT.fetch_add(1, Ordering::SeqCst);
///         let v = add_one(i).await;                                  // point 0
///         total += v;
///     }
///     let all = DTask::when_all((10..13).map(add_one)).await;        // point 1
///     total += all.iter().sum::<u64>();
///     DTask::delay(Duration::from_secs(3600)).await;                 // point 2
///     let c = middle(total).await;                                   // point 3
///     c + n
/// }
/// ```
fn hand_flow(n: u64) -> Call<u64> {
    dtasks::__private::call::<u64, _>("hand_flow", &(n,))
}

enum At<LTotal, LIt> {
    Start(u64),
    P0 {
        n: u64,
        total: LTotal,
        it: LIt,
        pending: Option<s::Pending>,
    },
    P1 {
        n: u64,
        total: LTotal,
        pending: Option<s::Pending>,
    },
    P2 {
        n: u64,
        total: LTotal,
        pending: Option<s::Pending>,
    },
    P3 {
        n: u64,
        pending: Option<s::Pending>,
    },
}

/// One await, as the expansion writes it: poll; when pending, save the frame (the
/// locals the rest of the body uses) and return `Pending`.
macro_rules! point {
    ($p:expr, $index:expr, $k:expr, [$(($ty:expr, $local:expr)),*]) => {{
        let mut p = $p;
        loop {
            if let Poll::Ready(v) = s::poll_once(&mut p).await {
                break v;
            }
            #[allow(unused_mut)]
            let mut w = p.saver($index, "hand_flow");
            $(w.put(&s::codec(&$k, &$ty), &$local);)*
            w.save();
            s::park().await;
        }
    }};
}

macro_rules! fresh {
    ($k:expr, $e:expr) => {{
        #[allow(unused_imports)]
        use s::{ProbeDist as _, ProbeLocal as _};
        let f = IntoFuture::into_future($e);
        let kind = (&s::Probe(&f)).__dtask_kind();
        kind.point(&$k, f)
    }};
}

fn hand_flow_run(input: &[u8], resume: Option<s::Resume<'_>>) -> Result<BodyFuture, Failure> {
    let ty_n = s::Ty::new();
    let ty_total = s::Ty::new();
    let ty_it = s::Ty::new();
    let (k0, k1, k2, k3) = (s::Ty::new(), s::Ty::new(), s::Ty::new(), s::Ty::new());
    let at = match resume {
        None => {
            let (n,): (u64,) = dtasks::__private::decode_args("hand_flow", input)?;
            At::Start(n)
        }
        Some(r) => match r.point() {
            0 => {
                let mut rd = r.reader(&k0);
                let n = rd.take(&s::codec(&k0, &ty_n))?;
                let total = rd.take(&s::codec(&k0, &ty_total))?;
                let it = rd.take(&s::codec(&k0, &ty_it))?;
                rd.finish()?;
                At::P0 {
                    n,
                    total,
                    it,
                    pending: Some(r.pending()),
                }
            }
            1 => {
                let mut rd = r.reader(&k1);
                let n = rd.take(&s::codec(&k1, &ty_n))?;
                let total = rd.take(&s::codec(&k1, &ty_total))?;
                rd.finish()?;
                At::P1 {
                    n,
                    total,
                    pending: Some(r.pending()),
                }
            }
            2 => {
                let mut rd = r.reader(&k2);
                let n = rd.take(&s::codec(&k2, &ty_n))?;
                let total = rd.take(&s::codec(&k2, &ty_total))?;
                rd.finish()?;
                At::P2 {
                    n,
                    total,
                    pending: Some(r.pending()),
                }
            }
            3 => {
                let mut rd = r.reader(&k3);
                let n = rd.take(&s::codec(&k3, &ty_n))?;
                rd.finish()?;
                At::P3 {
                    n,
                    pending: Some(r.pending()),
                }
            }
            p => return Err(s::bad_point(p)),
        },
    };
    Ok(dtasks::__private::body::<u64, _>(async move {
        match at {
            At::Start(n) => {
                let mut total = 0;
                let mut it = s::for_iter(0..n);
                while let Some(i) = Iterator::next(&mut it) {
                    BEFORE_AWAIT.fetch_add(1, Ordering::SeqCst);
                    let v = point!(
                        fresh!(k0, add_one(i)),
                        0,
                        k0,
                        [(ty_n, n), (ty_total, total), (ty_it, it)]
                    );
                    total += v;
                }
                let all = point!(
                    fresh!(k1, DTask::when_all((10..13).map(add_one))),
                    1,
                    k1,
                    [(ty_n, n), (ty_total, total)]
                );
                total += all.iter().sum::<u64>();
                point!(
                    fresh!(k2, DTask::delay(Duration::from_secs(3600))),
                    2,
                    k2,
                    [(ty_n, n), (ty_total, total)]
                );
                let c = point!(fresh!(k3, middle(total)), 3, k3, [(ty_n, n)]);
                c + n
            }
            At::P0 {
                n,
                total,
                it,
                mut pending,
            } => {
                let mut total = total;
                let mut it = it;
                let mut resuming = true;
                loop {
                    if resuming {
                        resuming = false;
                        let v = point!(
                            s::resume(&k0, &mut pending),
                            0,
                            k0,
                            [(ty_n, n), (ty_total, total), (ty_it, it)]
                        );
                        total += v;
                    } else {
                        let Some(i) = Iterator::next(&mut it) else {
                            break;
                        };
                        BEFORE_AWAIT.fetch_add(1, Ordering::SeqCst);
                        let v = point!(
                            fresh!(k0, add_one(i)),
                            0,
                            k0,
                            [(ty_n, n), (ty_total, total), (ty_it, it)]
                        );
                        total += v;
                    }
                }
                let all = point!(
                    fresh!(k1, DTask::when_all((10..13).map(add_one))),
                    1,
                    k1,
                    [(ty_n, n), (ty_total, total)]
                );
                total += all.iter().sum::<u64>();
                point!(
                    fresh!(k2, DTask::delay(Duration::from_secs(3600))),
                    2,
                    k2,
                    [(ty_n, n), (ty_total, total)]
                );
                let c = point!(fresh!(k3, middle(total)), 3, k3, [(ty_n, n)]);
                c + n
            }
            At::P1 {
                n,
                total,
                mut pending,
            } => {
                let mut total = total;
                let all = point!(
                    s::resume(&k1, &mut pending),
                    1,
                    k1,
                    [(ty_n, n), (ty_total, total)]
                );
                total += all.iter().sum::<u64>();
                point!(
                    fresh!(k2, DTask::delay(Duration::from_secs(3600))),
                    2,
                    k2,
                    [(ty_n, n), (ty_total, total)]
                );
                let c = point!(fresh!(k3, middle(total)), 3, k3, [(ty_n, n)]);
                c + n
            }
            At::P2 {
                n,
                total,
                mut pending,
            } => {
                point!(
                    s::resume(&k2, &mut pending),
                    2,
                    k2,
                    [(ty_n, n), (ty_total, total)]
                );
                let c = point!(fresh!(k3, middle(total)), 3, k3, [(ty_n, n)]);
                c + n
            }
            At::P3 { n, mut pending } => {
                let c = point!(s::resume(&k3, &mut pending), 3, k3, [(ty_n, n)]);
                c + n
            }
        }
    }))
}

fn hand_flow_type_id() -> std::any::TypeId {
    dtasks::__private::type_id_of(&hand_flow)
}

dtasks::__private::inventory::submit! {
    Registration::snapshot(
        "hand_flow",
        "snapshot_manual::hand_flow",
        hand_flow_type_id,
        hand_flow_run,
        0x5eed,
        &[],
    )
}

fn expected(n: u64) -> u64 {
    let total = (1..=n).sum::<u64>() + (11..14).sum::<u64>();
    (total + 1) * 2 + n
}

#[tokio::test]
async fn a_hand_written_machine_suspends_round_trips_and_resumes() -> TestResult {
    let rt = Runtime::builder(
        WorkerConfig::new()
            .register(hand_flow)
            .register(add_one)
            .register(middle),
    )
    .workers(2)
    .virtual_time()
    .build()?;
    let h = rt.client().start(hand_flow(5)).await?;
    rt.wait_idle().await;
    // Suspended on the timer: 5 sequential children and a fan-in are behind it.
    assert_eq!(h.status().await?, Status::Suspended);
    assert_eq!(h.try_result().await?, None);
    rt.advance(Duration::from_secs(3600));
    assert_eq!(h.result().await?, expected(5));
    // The code before the await ran once per iteration: no step re-ran it.
    assert_eq!(BEFORE_AWAIT.load(Ordering::SeqCst), 5);
    assert!(rt.transport().dead_letters().is_empty());
    Ok(())
}
