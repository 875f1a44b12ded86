use dtasks::dtask;

#[dtask(snapshot)]
async fn echo<T: serde::Serialize>(value: T) -> T {
    value
}

fn main() {}
