use dtasks::dtask;

#[dtask]
async fn echo<T: serde::Serialize>(value: T) -> T {
    value
}

fn main() {}
