use dtasks::dtask;

#[dtask]
async fn one() -> u64 {
    1
}

#[dtask(snapshot)]
async fn in_condition() -> u64 {
    let mut n = 0;
    while one().await > n {
        n += 1;
    }
    n
}

fn main() {}
