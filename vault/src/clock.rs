//! Wall-clock time in the formats Vault clients expect. Times are taken here, in the vault
//! layer, and written into records; the state machine never reads a clock.

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Now, UTC.
pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// RFC 3339 with nanoseconds, as Vault prints times.
pub fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Parses an RFC 3339 time; `None` for the empty string Vault uses for "never".
pub fn parse(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// Longest duration accepted anywhere, seconds: Go's (and so Vault's) largest duration,
/// about 292 years. A larger value is refused as Vault refuses it, and every time computed
/// from an accepted one stays far inside the calendar.
pub const MAX_DURATION_SECS: u64 = i64::MAX as u64 / 1_000_000_000;

/// Parses a Go-style duration ("0s", "90m", "1h30m", "72h", "3600" as seconds) into seconds.
/// `None` for anything malformed or longer than [`MAX_DURATION_SECS`].
pub fn parse_duration_secs(s: &str) -> Option<u64> {
    parse_unbounded(s).filter(|secs| *secs <= MAX_DURATION_SECS)
}

fn parse_unbounded(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() {
        return Some(0);
    }
    if let Ok(secs) = s.parse::<u64>() {
        return Some(secs);
    }
    let mut total = 0u64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let value: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            'h' => 3600,
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                0
            }
            'm' => 60,
            's' => 1,
            'd' => 86400,
            _ => return None,
        };
        total = total.checked_add(value.checked_mul(unit)?)?;
    }
    num.is_empty().then_some(total)
}

/// Formats seconds as a Go duration string ("0s", "1h0m0s"), as Vault echoes durations.
pub fn format_duration(secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        for (input, secs) in [
            ("0s", 0),
            ("90m", 5400),
            ("1h30m", 5400),
            ("3600", 3600),
            ("2d", 172800),
            ("", 0),
        ] {
            assert_eq!(parse_duration_secs(input), Some(secs), "{input}");
        }
        for bad in [
            "abc",
            "5x",
            "1h5",
            "1000000000000000s",
            "18446744073709551615",
        ] {
            assert_eq!(parse_duration_secs(bad), None, "{bad}");
        }
        assert_eq!(format_duration(5400), "1h30m0s");
        assert_eq!(format_duration(0), "0s");
    }
}
