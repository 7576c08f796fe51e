//! Parsing of human-friendly durations such as `"30s"`, `"500ms"` or `"2m"`.

use std::time::Duration;

/// Hint appended to every duration error so users know which forms are accepted.
const HINT: &str = "use seconds like 30 or 30.0, or 500ms, 2m";

/// Error returned when a text is not an acceptable duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a duration: {text:?} ({reason})")]
pub struct InvalidDuration {
    /// The offending text, as given.
    pub text: String,
    /// Why it was rejected (or how to write a valid one).
    pub reason: &'static str,
}

impl InvalidDuration {
    fn new(text: &str, reason: &'static str) -> Self {
        Self {
            text: text.to_owned(),
            reason,
        }
    }
}

/// Parses a duration.
///
/// Accepted forms: a plain number of seconds (`"30"`, `"30.0"`, `"0.5"`) or a
/// number followed by a unit: `ms`, `s`, `m`/`min`, `h`. Whitespace between the
/// number and the unit is allowed. Negative, infinite and NaN values are
/// rejected.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidDuration> {
    let trimmed = text.trim();
    let number_len = trimmed
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .len();
    let (number, unit) = trimmed.split_at(number_len);
    let number = number.trim();
    let millis_per_unit: u64 = match unit {
        "" | "s" => 1_000,
        "ms" => 1,
        "m" | "min" => 60_000,
        "h" => 3_600_000,
        _ => return Err(InvalidDuration::new(text, HINT)),
    };
    if number.is_empty() || number.starts_with('+') {
        return Err(InvalidDuration::new(text, HINT));
    }
    // Whole numbers are computed exactly; fractional ones go through f64.
    if let Ok(whole) = number.parse::<u64>() {
        return whole
            .checked_mul(millis_per_unit)
            .map(Duration::from_millis)
            .ok_or_else(|| InvalidDuration::new(text, "too large"));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| InvalidDuration::new(text, HINT))?;
    seconds_to_duration(value * millis_per_unit as f64 / 1_000.0)
        .map_err(|reason| InvalidDuration::new(text, reason))
}

/// Converts a number of seconds (for example a bare TOML number) to a duration.
pub(crate) fn seconds_to_duration(seconds: f64) -> Result<Duration, &'static str> {
    if seconds.is_nan() {
        return Err("must be a number");
    }
    if seconds < 0.0 {
        return Err("must not be negative");
    }
    Duration::try_from_secs_f64(seconds).map_err(|_| "too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_units_and_plain_seconds() {
        let cases = [
            ("30s", Duration::from_secs(30)),
            ("30", Duration::from_secs(30)),
            ("30.0", Duration::from_secs(30)),
            ("0.5", Duration::from_millis(500)),
            ("500ms", Duration::from_millis(500)),
            ("1ms", Duration::from_millis(1)),
            ("2m", Duration::from_secs(120)),
            ("2min", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1.5h", Duration::from_secs(5400)),
            (" 10 s ", Duration::from_secs(10)),
            ("0", Duration::ZERO),
            ("0.1s", Duration::from_millis(100)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn rejects_garbage_negative_and_nan() {
        for text in [
            "", "abc", "s", "10x", "-1", "-1s", "NaN", "nan", "inf", "1e", "+5", "1 2",
        ] {
            assert!(parse_duration(text).is_err(), "{text} should be rejected");
        }
        let err = parse_duration("-0.5").expect_err("negative");
        assert_eq!(err.reason, "must not be negative");
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn error_message_explains_forms() {
        let err = parse_duration("abc").expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "not a duration: \"abc\" (use seconds like 30 or 30.0, or 500ms, 2m)"
        );
    }

    #[test]
    fn seconds_conversion() {
        assert_eq!(seconds_to_duration(1.5), Ok(Duration::from_millis(1500)));
        assert!(seconds_to_duration(f64::NAN).is_err());
        assert!(seconds_to_duration(-1.0).is_err());
        assert!(seconds_to_duration(f64::INFINITY).is_err());
    }
}
