use dtasks::dtask;

#[dtask]
async fn show(v: impl std::fmt::Display) -> String {
    v.to_string()
}

fn main() {}
