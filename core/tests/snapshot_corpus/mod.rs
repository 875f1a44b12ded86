//! Function shapes written once and compiled twice: as a `#[dtask(snapshot)]` machine and
//! as a plain `async fn` (the original body). Every shape logs its side effects, in
//! evaluation order, to a thread-local log.

#![allow(dead_code, clippy::never_loop)]

use std::cell::RefCell;
use std::fmt::Display;
use std::time::Duration;

use dtasks::{dtask, DTask, Failure};
use serde::{Deserialize, Serialize};

thread_local! {
    static LOG: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Records a side effect.
pub(crate) fn log(what: impl Display) {
    LOG.with(|l| l.borrow_mut().push(what.to_string()));
}

/// Takes the side effects recorded so far.
pub(crate) fn take_log() -> Vec<String> {
    LOG.with(|l| std::mem::take(&mut *l.borrow_mut()))
}

// Children (their results come from the test's world, not from running them).

#[dtask]
pub(crate) async fn dbl(x: u64) -> u64 {
    x * 2
}

#[dtask]
pub(crate) async fn check(x: u64) -> Result<u64, String> {
    if x % 3 == 0 {
        Err(format!("{x} is a multiple of 3"))
    } else {
        Ok(x)
    }
}

#[dtask]
pub(crate) async fn lookup(x: u64) -> Option<u64> {
    (x % 4 != 0).then_some(x * 10)
}

#[dtask]
pub(crate) async fn flaky(x: u64) -> u64 {
    if x % 5 == 0 {
        panic!("flaky {x}");
    }
    x + 7
}

/// What the children return, computed the way their bodies would.
pub(crate) fn child_result(name: &str, input: &[u8]) -> Result<Vec<u8>, Failure> {
    let (x,): (u64,) = rmp_serde::from_slice(input).expect("a u64 argument");
    let bytes = match name {
        "dbl" => rmp_serde::to_vec(&(x * 2)),
        "check" => rmp_serde::to_vec(&if x % 3 == 0 {
            Err(format!("{x} is a multiple of 3"))
        } else {
            Ok(x)
        }),
        "lookup" => rmp_serde::to_vec(&(x % 4 != 0).then_some(x * 10)),
        "flaky" if x % 5 == 0 => return Err(failure(x)),
        "flaky" => rmp_serde::to_vec(&(x + 7)),
        other => panic!("unknown child {other}"),
    };
    Ok(bytes.expect("encodes"))
}

fn failure(x: u64) -> Failure {
    // A failure value as a worker would record it for a panicking child.
    rmp_serde::from_slice(&rmp_serde::to_vec(&("Panic", format!("flaky {x}"))).expect("encodes"))
        .expect("a failure decodes from (kind, message)")
}

/// Defines `$snap` as a `#[dtask(snapshot)]` function and `$direct` as the same plain
/// `async fn`.
macro_rules! both {
    ($snap:ident, $direct:ident, ($($arg:ident: $ty:ty),*) -> $out:ty $body:block) => {
        #[dtask(snapshot)]
        pub(crate) async fn $snap($($arg: $ty),*) -> $out $body

        pub(crate) async fn $direct($($arg: $ty),*) -> $out $body
    };
}

both!(nested_loops, nested_loops_direct, (rows: u64, cols: u64) -> Option<(u64, u64)> {
    log("start");
    let found = 'rows: loop {
        let mut r = 0;
        while r < rows {
            for c in 0..cols {
                log(format!("probe {r} {c}"));
                let hit = dbl(r * cols + c).await;
                if hit % 7 == 3 {
                    break 'rows Some((r, c));
                }
                if hit % 5 == 1 {
                    log("skip row");
                    break;
                }
            }
            r += 1;
        }
        break None;
    };
    let found = found.map(|(r, c)| (r + 1, c + 1));
    log(format!("found {found:?}"));
    found
});

both!(shadowing, shadowing_direct, (x: u64) -> (u64, String) {
    let x = x + 1;
    let y = dbl(x).await;
    let x = format!("{x}/{y}");
    log(&x);
    let y = {
        let y = y + 1;
        let z = dbl(y).await;
        log(format!("inner {y} {z}"));
        z + y
    };
    let x = (x, y);
    DTask::yield_now().await;
    log(format!("after yield {}", x.0));
    (x.1, x.0)
});

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
pub(crate) enum Kind {
    Gift(u64),
    Plain,
    Split { a: u64, b: u64 },
}

both!(matching, matching_direct, (k: Kind, n: u64) -> u64 {
    let base = match dbl(n).await {
        0 => 1,
        v => v,
    };
    let extra = match k {
        Kind::Gift(g) => {
            log(format!("gift {g}"));
            let w = dbl(g).await;
            w + g
        }
        Kind::Plain => {
            log("plain");
            0
        }
        Kind::Split { a, b } if a > b => dbl(a - b).await,
        Kind::Split { a, b } => {
            let (x, y) = DTask::join((dbl(a), dbl(b))).await;
            log(format!("split {x} {y}"));
            x + y
        }
    };
    base + extra
});

#[derive(Serialize, Deserialize, Debug, PartialEq)]
pub(crate) enum Err2 {
    Check(String),
    Missing(u64),
}

both!(tries, tries_direct, (xs: Vec<u64>) -> Result<u64, Err2> {
    let mut sum = 0;
    for x in xs {
        log(format!("x {x}"));
        let ok = check(x).await.map_err(Err2::Check)?;
        let found = lookup(ok).await.ok_or(Err2::Missing(ok))?;
        sum += found;
    }
    Ok(sum)
});

async fn opt_inner(x: u64) -> Option<u64> {
    Some(x + 1)
}

both!(option_try, option_try_direct, (a: u64, b: u64) -> Option<u64> {
    let first = lookup(a).await?;
    let local = opt_inner(first).await?;
    let second = lookup(b).await?;
    log(format!("{first} {local} {second}"));
    Some(first + second + local)
});

both!(early_return, early_return_direct, (n: u64, stop: u64) -> u64 {
    let mut acc: u64 = 0;
    let mut i = 0;
    loop {
        if i == stop {
            log("early");
            return acc + 1000;
        }
        let d = dbl(i).await;
        acc += d;
        i += 1;
        if i >= n {
            break;
        }
    }
    DTask::delay(Duration::from_secs(5)).await;
    log("late");
    acc
});

both!(break_value, break_value_direct, (n: u64) -> (u64, u64) {
    let mut i = 0;
    let first_big = loop {
        let v = dbl(i).await;
        if v > n {
            break v;
        }
        i += 1;
        if i > 50 {
            break 0;
        }
    };
    let labelled = 'outer: {
        if n % 2 == 0 {
            let w = dbl(n).await;
            break 'outer w + 1;
        }
        n
    };
    (first_big, labelled)
});

both!(assigns, assigns_direct, (n: u64) -> Vec<u64> {
    let mut out = Vec::new();
    let mut last: u64 = 0;
    let mut i = 0;
    while i < n {
        last = dbl(i).await;
        out.push(last);
        last += dbl(i + 100).await;
        let mut pair = (0u64, 0u64);
        pair.1 = dbl(last).await;
        out.push(pair.1 - pair.0);
        i += 1;
    }
    out.push(last);
    out
});

both!(combinators, combinators_direct, (n: u64) -> (u64, usize, u64, Result<u64, bool>) {
    let handle = DTask::spawn(dbl(n + 1));
    let all: Vec<u64> = DTask::when_all((0..n).map(dbl)).await;
    log(format!("all {}", all.len()));
    let (i, first) = DTask::when_any([dbl(n), dbl(n + 2)]).await;
    let caught = flaky(n).catch_failure().await.map_err(|f| f.is_child_failure());
    let spawned = handle.await;
    let again = DTask::spawn(dbl(3));
    DTask::yield_now().await;
    let later = again.await;
    (all.iter().sum::<u64>() + spawned + later, i, first, caught)
});

both!(local_work, local_work_direct, (n: u64) -> u64 {
    let mut total = 0;
    for i in 0..n {
        let ran = DTask::run(move || async move { i * 3 }).await;
        tokio::task::yield_now().await;
        let local = opt_inner(ran).await.unwrap_or(0);
        total += dbl(local).await;
    }
    total
});

both!(typed_lets, typed_lets_direct, (n: u64) -> String {
    let v: u64 = dbl(n).await;
    let (a, b): (u64, u64) = DTask::join((dbl(v), dbl(v + 1))).await;
    let Some(c) = lookup(a).await else {
        log("none");
        return format!("{a} {b}");
    };
    let words: Vec<String> = vec![a.to_string(), b.to_string(), c.to_string()];
    DTask::yield_now().await;
    words.join(",")
});

both!(if_chains, if_chains_direct, (n: u64) -> u64 {
    let r = if n % 3 == 0 {
        dbl(n).await
    } else if n % 3 == 1 {
        let x = dbl(n + 1).await;
        x + 1
    } else {
        log("else");
        n
    };
    let mut s = 0;
    if let Some(v) = lookup(r).await {
        s += v;
        DTask::yield_now().await;
        s += 1;
    } else {
        s += 2;
    }
    if dbl(s).await > 10 {
        log("big");
    }
    r + s
});
