use dtasks::dtask;

#[dtask]
async fn one() -> u64 {
    1
}

fn noisy() -> u64 {
    2
}

#[dtask(snapshot)]
async fn mid_expression() -> u64 {
    let v = noisy() + one().await;
    v
}

fn main() {}
