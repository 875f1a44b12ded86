// A failure is caught per call (or spawn handle), before the calls are combined.
use dtasks::{dtask, DTask};

#[dtask]
async fn triple(x: u64) -> u64 {
    x * 3
}

#[dtask]
async fn catches_a_join() -> u64 {
    let both = DTask::join((triple(1), triple(2))).map(|(a, b)| a + b);
    both.catch_failure().await.unwrap_or(u64::MAX)
}

fn main() {}
