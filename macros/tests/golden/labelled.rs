// Nested labelled loops, `break` with a value, shadowing.
#[dtask(snapshot)]
async fn search(rows: u64, cols: u64) -> Option<(u64, u64)> {
    let found = 'rows: loop {
        let mut r = 0;
        while r < rows {
            for c in 0..cols {
                let hit = probe(r, c).await;
                if hit {
                    break 'rows Some((r, c));
                }
            }
            r += 1;
        }
        break None;
    };
    let found = found.map(|(r, c)| (r + 1, c + 1));
    found
}
