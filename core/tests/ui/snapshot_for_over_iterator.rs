use dtasks::dtask;

#[dtask]
async fn one() -> u64 {
    1
}

#[dtask(snapshot)]
async fn over_iterator(xs: Vec<u64>) -> u64 {
    let mut total = 0;
    for x in xs.into_iter().map(|x| x * 2) {
        let n = one().await;
        total += x + n;
    }
    total
}

fn main() {}
