use dtasks::dtask;

#[dtask]
async fn greet(name: &str) -> String {
    format!("hello {name}")
}

fn main() {}
