use dtasks::dtask;

#[dtask]
async fn one() -> u64 {
    1
}

#[dtask(snapshot)]
async fn in_closure() -> u64 {
    let f = || async { one().await };
    f().await
}

fn main() {}
