use dtasks::dtask;

#[dtask]
async fn one() -> u64 {
    1
}

#[dtask(snapshot)]
async fn shadowed(x: u64) -> u64 {
    let y = {
        let x = x + 1;
        one().await + x
    };
    x + y
}

fn main() {}
