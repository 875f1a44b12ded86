// A loop of child awaits, then a timer.
#[dtask(snapshot)]
async fn loop_sum(n: u64) -> u64 {
    let mut total = 0;
    for i in 0..n {
        let v = add_one(i).await;
        total += v;
    }
    DTask::delay(Duration::from_secs(60)).await;
    total
}
