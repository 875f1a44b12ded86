use dtasks::dtask;

#[dtask]
async fn one() -> u64 {
    1
}

struct Connection {
    open: bool,
}

#[dtask(snapshot)]
async fn holds_a_connection() -> bool {
    let conn = Connection { open: true };
    let _n = one().await;
    conn.open
}

fn main() {}
