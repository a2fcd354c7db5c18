//! Wall-clock time as the farm records and shows it.

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// How long ago `ms` was, at `now`, in one short word: `12s ago`, `5m ago`, `3h ago`, `2d ago`.
pub fn ago(ms: u64, now: u64) -> String {
    let secs = now.saturating_sub(ms) / 1000;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86_399 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

/// When something at `at_ms` expires, seen at `now_ms`: `now`, `within a day`, `in 1 day`,
/// `in 12 days`.
pub fn expires(at_ms: u64, now_ms: u64) -> String {
    let days = at_ms.saturating_sub(now_ms) / 86_400_000;
    match (at_ms <= now_ms, days) {
        (true, _) => "now".to_owned(),
        (false, 0) => "within a day".to_owned(),
        (false, 1) => "in 1 day".to_owned(),
        (false, d) => format!("in {d} days"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_words() {
        assert_eq!(ago(1_000, 3_000), "2s ago");
        assert_eq!(ago(0, 7_200_000), "2h ago");
        assert_eq!(expires(10 * 86_400_000, 0), "in 10 days");
        assert_eq!(expires(86_400_000 + 5, 0), "in 1 day");
        assert_eq!(expires(0, 5), "now");
    }
}
