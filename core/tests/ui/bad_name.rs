use dtasks::dtask;

#[dtask(name = "billing charge")]
async fn charge(cents: u64) -> u64 {
    cents
}

#[dtask(queue = "x")]
async fn refund(cents: u64) -> u64 {
    cents
}

fn main() {}
