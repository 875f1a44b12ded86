//! `dtasks dead-letters`: the transport's dead-letter queue, listed, shown, replayed and
//! dropped.

use dtasks_amqp::DeadLetter;
use serde_json::json;

use crate::args::DeadLettersCommand;
use crate::conn::transport;
use crate::exit::{Doing, Done, Exit, NOT_FOUND};
use crate::render::{out, table};
use crate::time::format_time;

pub(crate) async fn run(command: DeadLettersCommand) -> Done {
    let transport = transport().await?;
    let letters = || async {
        transport
            .dead_letters()
            .await
            .doing(|| format!("reading {}", transport.dead_letter_queue()))
    };
    match command {
        DeadLettersCommand::List { json } => {
            let all = letters().await?;
            if json {
                for (i, d) in all.iter().enumerate() {
                    out(&letter_json(i + 1, d).to_string());
                }
            } else {
                let mut rows = vec![["N", "ID", "SOURCE QUEUE", "SIZE", "REASON"]
                    .map(String::from)
                    .to_vec()];
                for (i, d) in all.iter().enumerate() {
                    rows.push(vec![
                        (i + 1).to_string(),
                        d.id.clone(),
                        or_dash(d.queue.as_deref()),
                        size_cell(d.body.len(), d.truncated),
                        or_dash(d.reason.as_deref()),
                    ]);
                }
                for line in table(&rows) {
                    out(&line);
                }
            }
            Ok(())
        }
        DeadLettersCommand::Show { n } => {
            let all = letters().await?;
            let d = nth(&all, n)?;
            let fields = [
                ("n", n.to_string()),
                ("id", d.id.clone()),
                ("message id", or_dash(d.message_id.as_deref())),
                ("source queue", or_dash(d.queue.as_deref())),
                ("reason", or_dash(d.reason.as_deref())),
                ("instance", or_dash(d.instance.as_deref())),
                ("dtask", or_dash(d.dtask.as_deref())),
                ("published", d.published_at.map_or("-".into(), format_time)),
                ("size", size_line(d.body.len(), d.truncated)),
            ];
            for (k, v) in fields {
                out(&format!("{:<13} {v}", format!("{k}:")));
            }
            out("body:");
            for line in hex_dump(&d.body) {
                out(&line);
            }
            Ok(())
        }
        DeadLettersCommand::Replay { n: Some(n), .. } => {
            let all = letters().await?;
            let id = nth(&all, n)?.id.clone();
            let (letter, queue) = transport
                .replay_dead_letter(&id)
                .await
                .map_err(|e| letter_failed("replaying", n, &id, &e))?;
            out(&format!("replayed {} to {queue}", letter.id));
            Ok(())
        }
        DeadLettersCommand::Drop { n: Some(n), .. } => {
            let all = letters().await?;
            let id = nth(&all, n)?.id.clone();
            let letter = transport
                .discard_dead_letter(&id)
                .await
                .map_err(|e| letter_failed("dropping", n, &id, &e))?;
            out(&format!("dropped {}", letter.id));
            Ok(())
        }
        DeadLettersCommand::Drop { n: None, .. } => {
            let dropped = transport
                .discard_dead_letters()
                .await
                .doing(|| "dropping the dead letters".to_string())?;
            for letter in &dropped {
                out(&format!("dropped {}", letter.id));
            }
            eprintln!(
                "{} dropped from {}",
                dropped.len(),
                transport.dead_letter_queue()
            );
            Ok(())
        }
        DeadLettersCommand::Replay { n: None, .. } => {
            let replayed = transport
                .replay_dead_letters()
                .await
                .doing(|| "replaying the dead letters".to_string())?;
            for (letter, queue) in &replayed {
                out(&format!("replayed {} to {queue}", letter.id));
            }
            let left = letters().await?.len();
            eprintln!(
                "{} replayed; {left} left in {}",
                replayed.len(),
                transport.dead_letter_queue()
            );
            Ok(())
        }
    }
}

/// The exit for `e`, met while `doing` dead letter `n` (`id`): not found when it left the
/// queue since it was listed.
fn letter_failed(doing: &str, n: usize, id: &str, e: &dtasks::Error) -> Exit {
    if e.is_not_found() {
        Exit::new(
            NOT_FOUND,
            format!("dead letter {n} ({id}) is no longer in the queue"),
        )
    } else {
        Exit::from_error(&format!("{doing} dead letter {n} ({id})"), e)
    }
}

fn or_dash(s: Option<&str>) -> String {
    s.unwrap_or("-").to_string()
}

/// Dead letter `n` (from 1) of `all`.
fn nth(all: &[DeadLetter], n: usize) -> Result<&DeadLetter, Exit> {
    n.checked_sub(1).and_then(|i| all.get(i)).ok_or_else(|| {
        Exit::new(
            NOT_FOUND,
            format!("no dead letter {n}: the queue holds {}", all.len()),
        )
    })
}

fn letter_json(n: usize, d: &DeadLetter) -> serde_json::Value {
    json!({
        "n": n,
        "id": d.id,
        "message_id": d.message_id,
        "queue": d.queue,
        "reason": d.reason,
        "instance": d.instance,
        "dtask": d.dtask,
        "published": d.published_at.map(format_time),
        "size": d.body_size(),
        "truncated": d.truncated.is_some(),
    })
}

/// The size column of the listing: the whole body's size, marked when the dead-letter
/// queue kept only its first `kept` bytes (a body over 64 KiB is cut when dead-lettered).
fn size_cell(kept: usize, truncated: Option<usize>) -> String {
    match truncated {
        Some(size) => format!("{size} (cut to {kept})"),
        None => kept.to_string(),
    }
}

/// The size line of `show`: as [`size_cell`], saying what a cut letter means.
fn size_line(kept: usize, truncated: Option<usize>) -> String {
    match truncated {
        Some(size) => format!(
            "{size} bytes, cut to the first {kept} when dead-lettered (shown as kept; \
             cannot be replayed)"
        ),
        None => format!("{kept} bytes"),
    }
}

/// `bytes` as lines of 16: offset, hex, and the printable ASCII.
fn hex_dump(bytes: &[u8]) -> Vec<String> {
    bytes
        .chunks(16)
        .enumerate()
        .map(|(i, chunk)| {
            let hex: Vec<String> = chunk.iter().map(|b| format!("{b:02x}")).collect();
            let text: String = chunk
                .iter()
                .map(|&b| {
                    if b.is_ascii_graphic() || b == b' ' {
                        char::from(b)
                    } else {
                        '.'
                    }
                })
                .collect();
            format!("{:08x}  {:<47}  |{text}|", i * 16, hex.join(" "))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::{hex_dump, size_cell, size_line};

    #[test]
    fn a_cut_body_is_marked() {
        assert_eq!(size_cell(15, None), "15");
        assert_eq!(size_cell(65_536, Some(70_000)), "70000 (cut to 65536)");
        assert_eq!(size_line(15, None), "15 bytes");
        let line = size_line(65_536, Some(70_000));
        assert!(
            line.starts_with("70000 bytes, cut to the first 65536"),
            "{line}"
        );
        assert!(line.contains("cannot be replayed"), "{line}");
    }

    #[test]
    fn bodies_show_as_hex_and_text() {
        let lines = hex_dump(b"DT\x01not an envelope!");
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].starts_with("00000000  44 54 01 6e"),
            "{}",
            lines[0]
        );
        assert!(lines[0].ends_with("|DT.not an envelo|"), "{}", lines[0]);
        assert!(lines[1].starts_with("00000010  70 65 21 "), "{}", lines[1]);
        assert!(lines[1].ends_with("|pe!|"), "{}", lines[1]);
    }
}
