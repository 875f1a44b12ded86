// `?` on a child's result, `match` with awaits in its arms, an early return.
#[dtask(snapshot)]
async fn checkout(order: Order) -> Result<Receipt, PayError> {
    let paid = charge(order.cents).await?;
    let note = match order.kind {
        Kind::Gift => {
            let card = write_card(order.id).await;
            format!("gift {card}")
        }
        Kind::Plain => String::new(),
    };
    if note.is_empty() {
        return Ok(Receipt { paid, note: None });
    }
    Ok(Receipt { paid, note: Some(note) })
}
