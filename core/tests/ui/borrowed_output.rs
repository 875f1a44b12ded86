use dtasks::dtask;

#[dtask]
async fn name() -> &'static str {
    "fixed"
}

fn main() {}
