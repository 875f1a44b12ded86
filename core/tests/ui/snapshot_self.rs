use dtasks::dtask;

struct Shop;

impl Shop {
    #[dtask(snapshot)]
    async fn order(&self) -> u64 {
        1
    }
}

fn main() {}
