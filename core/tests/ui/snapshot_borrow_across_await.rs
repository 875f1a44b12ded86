use dtasks::dtask;

#[dtask]
async fn one() -> u64 {
    1
}

#[dtask(snapshot)]
async fn borrows(names: Vec<String>) -> usize {
    let first = &names[0];
    let n = one().await;
    first.len() + n as usize
}

fn main() {}
