use dtasks::dtask;

fn upgrade(old: Vec<u8>) -> Vec<u8> {
    old
}

#[dtask(snapshot, migrate(from = "68d067ec9fcb272b", with = upgrade))]
async fn wrong(x: u64) -> u64 {
    x
}

fn main() {}
