// `DTask::spawn` starts one call; a combinator of calls is spawned part by part.
use dtasks::{dtask, DTask};

#[dtask]
async fn triple(x: u64) -> u64 {
    x * 3
}

#[dtask]
async fn spawns_a_fan_out() -> usize {
    let h = DTask::spawn(DTask::when_all([triple(1), triple(2)]));
    h.await.len()
}

fn main() {}
