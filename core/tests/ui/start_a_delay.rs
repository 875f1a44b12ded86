// A client starts calls of #[dtask] functions only: a delay is not an instance.
use std::time::Duration;

use dtasks::{DTask, MemoryTransport};

#[tokio::main]
async fn main() {
    let client = dtasks::Client::new(MemoryTransport::new());
    let _ = client.start(DTask::delay(Duration::from_secs(1))).await;
}
