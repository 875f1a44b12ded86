use dtasks::dtask;

#[dtask]
async fn one() -> u64 {
    1
}

#[dtask(snapshot)]
async fn in_guard(x: Option<u64>) -> u64 {
    match x {
        Some(v) if v > one().await => v,
        _ => 0,
    }
}

fn main() {}
