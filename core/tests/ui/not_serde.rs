use dtasks::dtask;

struct Card {
    number: String,
}

#[dtask]
async fn charge(card: Card) -> u64 {
    card.number.len() as u64
}

fn main() {}
