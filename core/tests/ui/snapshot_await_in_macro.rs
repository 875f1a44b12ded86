use dtasks::dtask;

#[dtask]
async fn one() -> u64 {
    1
}

#[dtask(snapshot)]
async fn in_macro() -> String {
    format!("{}", one().await)
}

fn main() {}
