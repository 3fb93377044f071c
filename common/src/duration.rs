//! The one duration parser: what the CRDs (`meshbench_crds::units::Duration`), every
//! command-line flag taking a DURATION, and the loadgen's load plans accept.
//!
//! A number with a unit: `500us`, `25ms`, `1.5s`, `5m`, `1h30m`, `1m 30s` (humantime's
//! syntax plus one decimal number with a unit, which humantime lacks). A bare number is
//! rejected with a hint instead of guessing its unit; so are negative values and anything
//! longer than [`MAX`].

use std::time::Duration;

/// Largest duration accepted; bounds arithmetic on user input.
pub const MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a duration was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{value:?} is not a duration{hint}")]
pub struct DurationError {
    /// The rejected input, as given.
    pub value: String,
    /// A suggestion, already formatted with a leading separator (`"; …"`), or empty.
    pub hint: String,
}

/// Parses `s` (surrounding whitespace ignored), returning the duration or an error with a
/// hint for common mistakes. Usable directly as a clap `value_parser`.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let trimmed = s.trim();
    let err = |hint: String| DurationError {
        value: s.to_string(),
        hint,
    };
    if trimmed.is_empty() {
        return Err(err("; expected e.g. 25ms, 2s or 5m".into()));
    }
    if trimmed.starts_with('-') {
        return Err(err("; durations cannot be negative".into()));
    }
    if trimmed.parse::<f64>().is_ok() {
        return Err(err(format!(
            "; a unit is required: did you mean {trimmed}ms or {trimmed}s?"
        )));
    }
    // humantime does not take fractions ("1.5s"); accept them because people write
    // them, by converting to the next smaller unit.
    if let Some(d) = parse_fractional(trimmed) {
        return bounded(d, s);
    }
    match humantime::parse_duration(trimmed) {
        Ok(d) => bounded(d, s),
        Err(_) => Err(err(
            "; expected a number with a unit: ns, us, ms, s, m, h (e.g. 25ms, 2s, 1m30s)".into(),
        )),
    }
}

fn bounded(d: Duration, original: &str) -> Result<Duration, DurationError> {
    if d > MAX {
        Err(DurationError {
            value: original.to_string(),
            hint: "; at most 7 days (168h)".into(),
        })
    } else {
        Ok(d)
    }
}

fn parse_fractional(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (num, unit) = s.split_at(split);
    if !num.contains('.') {
        return None;
    }
    let value: f64 = num.parse().ok()?;
    let scale = match unit {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return None,
    };
    let secs = value * scale;
    if !secs.is_finite() || secs < 0.0 || secs > MAX.as_secs_f64() {
        return None;
    }
    Some(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse("25ms"), Ok(Duration::from_millis(25)));
        assert_eq!(parse("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1m 30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("1s 500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse(" 0.25m "), Ok(Duration::from_secs(15)));
        assert_eq!(parse("500us"), Ok(Duration::from_micros(500)));
    }

    #[test]
    fn bare_numbers_get_a_hint() {
        let e = parse("25").unwrap_err().to_string();
        assert!(e.contains("did you mean 25ms"), "{e}");
        let e = parse("-3s").unwrap_err().to_string();
        assert!(e.contains("negative"), "{e}");
        assert!(parse("9999999h").is_err());
        assert!(parse("8d").is_err());
        assert!(parse("").is_err());
        assert!(parse("fast").is_err());
    }

    #[test]
    fn the_message_names_the_value_and_the_fix() {
        assert_eq!(
            parse("25").unwrap_err().to_string(),
            "\"25\" is not a duration; a unit is required: did you mean 25ms or 25s?"
        );
    }
}
