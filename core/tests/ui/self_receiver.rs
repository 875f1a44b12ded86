use dtasks::dtask;

struct Shop;

impl Shop {
    #[dtask]
    async fn sell(&self, item: u32) -> u32 {
        item
    }
}

fn main() {}
