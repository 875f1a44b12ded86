use dtasks::dtask;

#[dtask]
async fn one() -> u64 {
    1
}

#[dtask(snapshot)]
async fn in_async_block() -> u64 {
    let f = async { one().await + 1 };
    f.await
}

fn main() {}
