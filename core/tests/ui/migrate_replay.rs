use dtasks::{dtask, SavedMachine};

fn upgrade(old: SavedMachine) -> Result<SavedMachine, String> {
    Ok(old)
}

#[dtask(migrate(from = "68d067ec9fcb272b", with = upgrade))]
async fn replayed(x: u64) -> u64 {
    x
}

fn main() {}
