use dtasks::{dtask, SavedMachine};

fn upgrade(old: SavedMachine) -> Result<SavedMachine, String> {
    Ok(old)
}

#[dtask(snapshot, migrate(from = "code A", with = upgrade))]
async fn bad(x: u64) -> u64 {
    x
}

fn main() {}
