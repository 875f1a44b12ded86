use dtasks::dtask;

#[dtask(snapshot, migrate(from = "68d067ec9fcb272b"))]
async fn incomplete(x: u64) -> u64 {
    x
}

fn main() {}
