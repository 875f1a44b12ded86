//! Wall-clock time as the headers carry it: milliseconds since the Unix epoch.

use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Milliseconds since the epoch, rounded up: a timer is never due before its time.
pub(crate) fn ceil_ms(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => {
            let ms = d.as_millis() as i64;
            if d.subsec_nanos() % 1_000_000 == 0 {
                ms
            } else {
                ms + 1
            }
        }
        Err(_) => 0,
    }
}
