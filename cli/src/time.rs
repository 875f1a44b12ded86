//! Times on the command line: RFC 3339 (chrono) both ways, and durations before now.

use std::time::{Duration, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};

/// `t` as RFC 3339 in UTC with milliseconds.
pub(crate) fn format_time(t: SystemTime) -> String {
    DateTime::<Utc>::from(t).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A time given as RFC 3339 (any offset), or as a duration before now (`1h`, `2d`).
pub(crate) fn parse_time(s: &str) -> Result<SystemTime, String> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc).into());
    }
    match parse_duration(s) {
        Some(d) => SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| format!("`{s}` ago is before the epoch")),
        None => Err(format!(
            "`{s}` is neither an RFC 3339 time (2025-05-01T12:00:00Z) nor a duration \
             (90s, 15m, 1h, 2d, 1w, 1h30m)"
        )),
    }
}

/// A duration like `90s`, `15m`, `1h30m`, `500ms`: numbers each followed by a unit (ms,
/// s, m, h, d, w).
pub(crate) fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit_ms: u64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(Duration::from_millis(n.checked_mul(unit_ms)?))?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn rfc3339_with_any_offset_and_back_in_utc() {
        let t = parse_time("2025-05-01T14:00:00.250+02:00").unwrap();
        assert_eq!(format_time(t), "2025-05-01T12:00:00.250Z");
        let t = parse_time("2025-05-01T12:00:00Z").unwrap();
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap().as_secs(),
            1_746_100_800
        );
    }

    #[test]
    fn durations_before_now() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("1w"), Some(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        for bad in ["", "h", "1", "1x", "1h 2m", "-1h", "1.5h"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
        let before = SystemTime::now() - Duration::from_secs(3600);
        let t = parse_time("1h").unwrap();
        let after = SystemTime::now() - Duration::from_secs(3600);
        assert!(before <= t && t <= after);
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }
}
