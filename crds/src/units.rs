//! Explicit units: durations written as `25ms`/`2s`/`5m`, and Kubernetes quantities for
//! CPU (cores, `250m`) and memory (bytes, `64Mi`).
//!
//! Durations are kept as the string the user wrote (so a round trip through the API
//! server is byte-for-byte stable) and parsed on use; quantities reuse k8s-openapi's
//! `Quantity` for the wire format and are parsed here into millicores or bytes.

use std::borrow::Cow;
use std::fmt;
use std::time::Duration as StdDuration;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a unit string was rejected; rendered into a user-facing message by validation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    /// The value is not a duration such as `25ms`, `2s`, `1m30s`.
    #[error("{value:?} is not a duration{hint}")]
    Duration {
        /// The rejected input.
        value: String,
        /// A suggestion, already formatted with a leading separator, or empty.
        hint: String,
    },
    /// The value is not a Kubernetes quantity.
    #[error("{value:?} is not a Kubernetes quantity (expected e.g. {example})")]
    Quantity {
        /// The rejected input.
        value: String,
        /// An example of a valid quantity of the expected kind.
        example: &'static str,
    },
    /// The quantity is well formed but too large to represent.
    #[error("{value:?} is too large (at most {max})")]
    TooLarge {
        /// The rejected input.
        value: String,
        /// The largest accepted value, human readable.
        max: &'static str,
    },
}

/// A duration written with an explicit unit (`500us`, `25ms`, `2s`, `5m`, `1h30m`).
///
/// Stored as written; [`Duration::get`] parses it. Deserialisation accepts only strings,
/// so a bare number (`25`) is rejected with a hint instead of guessing its unit.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Duration(String);

impl Duration {
    /// Largest duration any field accepts; bounds arithmetic on user input.
    pub const MAX: StdDuration = meshbench_common::duration::MAX;

    /// Parses `s`, returning the duration or an error with a hint for common mistakes.
    /// The parser is [`meshbench_common::duration::parse`], shared with every command-line
    /// flag and the loadgen's plans, so all of them accept the same text (`1.5s` too).
    pub fn parse(s: &str) -> Result<StdDuration, UnitError> {
        meshbench_common::duration::parse(s).map_err(|e| UnitError::Duration {
            value: e.value,
            hint: e.hint,
        })
    }

    /// The parsed duration. Call after validation; an unparsable value yields zero.
    pub fn get(&self) -> StdDuration {
        Self::parse(&self.0).unwrap_or_default()
    }

    /// The parsed duration, or the reason it is invalid.
    pub fn try_get(&self) -> Result<StdDuration, UnitError> {
        Self::parse(&self.0)
    }

    /// The text as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Formats a duration in the shortest exact unit (`1500ms` → `1500ms`, `2000ms` → `2s`).
    pub fn from_std(d: StdDuration) -> Self {
        let ns = d.as_nanos();
        let text = if ns == 0 {
            "0s".to_string()
        } else if ns.is_multiple_of(3_600_000_000_000) {
            format!("{}h", ns / 3_600_000_000_000)
        } else if ns.is_multiple_of(60_000_000_000) {
            format!("{}m", ns / 60_000_000_000)
        } else if ns.is_multiple_of(1_000_000_000) {
            format!("{}s", ns / 1_000_000_000)
        } else if ns.is_multiple_of(1_000_000) {
            format!("{}ms", ns / 1_000_000)
        } else if ns.is_multiple_of(1_000) {
            format!("{}us", ns / 1_000)
        } else {
            format!("{ns}ns")
        };
        Self(text)
    }
}

impl fmt::Debug for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Duration {
    fn from(s: &str) -> Self {
        Self(s.to_string())
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration with a unit, e.g. \"25ms\", \"2s\" or \"5m\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                Duration::parse(v).map_err(E::custom)?;
                Ok(Duration(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                Err(E::custom(UnitError::Duration {
                    value: v.to_string(),
                    hint: format!("; a unit is required: did you mean \"{v}ms\" or \"{v}s\"?"),
                }))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(E::custom(UnitError::Duration {
                    value: v.to_string(),
                    hint: if v < 0 {
                        "; durations cannot be negative".into()
                    } else {
                        format!("; a unit is required: did you mean \"{v}ms\" or \"{v}s\"?")
                    },
                }))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Duration, E> {
                Err(E::custom(UnitError::Duration {
                    value: v.to_string(),
                    hint: format!("; a unit is required: did you mean \"{v}ms\" or \"{v}s\"?"),
                }))
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A duration with an explicit unit: ns, us, ms, s, m or h (e.g. 25ms, 2s, 1m30s).",
            "maxLength": 32,
            "pattern": "^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h) ?)+$"
        })
    }
}

/// Parses a CPU quantity (`250m`, `0.5`, `2`) into millicores.
pub fn cpu_millis(q: &Quantity) -> Result<u64, UnitError> {
    let value = parse_quantity(&q.0).ok_or_else(|| UnitError::Quantity {
        value: q.0.clone(),
        example: "\"250m\" or \"1\" (cores)",
    })?;
    let millis = (value * 1000.0).ceil();
    // 1M cores is far beyond any node; larger values are typos.
    if millis > 1e9 {
        return Err(UnitError::TooLarge {
            value: q.0.clone(),
            max: "1000000 cores",
        });
    }
    Ok(millis as u64)
}

/// Parses a memory quantity (`64Mi`, `1G`, `1048576`) into bytes.
pub fn memory_bytes(q: &Quantity) -> Result<u64, UnitError> {
    let value = parse_quantity(&q.0).ok_or_else(|| UnitError::Quantity {
        value: q.0.clone(),
        example: "\"64Mi\" or \"1Gi\" (bytes)",
    })?;
    let bytes = value.ceil();
    if bytes > 2f64.powi(50) {
        return Err(UnitError::TooLarge {
            value: q.0.clone(),
            max: "1Pi",
        });
    }
    Ok(bytes as u64)
}

/// Parses the Kubernetes quantity grammar into a non-negative number of base units.
fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    if s.is_empty() || s.len() > 64 {
        return None;
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() || num.matches('.').count() > 1 || num == "." || num.starts_with("+.") {
        return None;
    }
    let number: f64 = num.trim_start_matches('+').parse().ok()?;
    let factor = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..].parse().ok()?;
            if !(-18..=18).contains(&e) {
                return None;
            }
            10f64.powi(e)
        }
        _ => return None,
    };
    let v = number * factor;
    v.is_finite().then_some(v)
}

/// Formats millicores as a canonical Kubernetes CPU quantity.
pub fn cpu_quantity(millis: u64) -> Quantity {
    if millis.is_multiple_of(1000) {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

/// Formats bytes as a Kubernetes memory quantity, using the largest exact binary suffix.
pub fn memory_quantity(bytes: u64) -> Quantity {
    for (suffix, factor) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= factor && bytes.is_multiple_of(factor) {
            return Quantity(format!("{}{suffix}", bytes / factor));
        }
    }
    Quantity(bytes.to_string())
}

/// Longest accepted quantity string (`1500m`, `64Mi`, `1.5Gi` are a few characters).
pub const MAX_QUANTITY_LEN: u64 = 32;

/// Schema of a Kubernetes quantity field: an integer or a string of at most
/// [`MAX_QUANTITY_LEN`] characters. The bound is what lets a real API server accept the
/// CRD: the CEL rules that compare requests with limits are costed by the longest string
/// they may parse, and an unbounded one exceeds the cost budget (the CRD is refused).
pub fn quantity_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "maxLength": MAX_QUANTITY_LEN,
        "nullable": true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(Duration::parse("25ms"), Ok(StdDuration::from_millis(25)));
        assert_eq!(Duration::parse("2s"), Ok(StdDuration::from_secs(2)));
        assert_eq!(Duration::parse("5m"), Ok(StdDuration::from_secs(300)));
        assert_eq!(Duration::parse("1m30s"), Ok(StdDuration::from_secs(90)));
        assert_eq!(Duration::parse("1.5s"), Ok(StdDuration::from_millis(1500)));
        assert_eq!(Duration::parse("500us"), Ok(StdDuration::from_micros(500)));
    }

    #[test]
    fn bare_numbers_get_a_hint() {
        let e = Duration::parse("25").unwrap_err().to_string();
        assert!(e.contains("did you mean 25ms"), "{e}");
        let e = Duration::parse("-3s").unwrap_err().to_string();
        assert!(e.contains("negative"), "{e}");
        assert!(Duration::parse("9999999h").is_err());
        assert!(Duration::parse("").is_err());
        assert!(Duration::parse("fast").is_err());
    }

    #[test]
    fn duration_formats_in_largest_exact_unit() {
        assert_eq!(
            Duration::from_std(StdDuration::from_millis(2000)).as_str(),
            "2s"
        );
        assert_eq!(
            Duration::from_std(StdDuration::from_millis(1500)).as_str(),
            "1500ms"
        );
        assert_eq!(Duration::from_std(StdDuration::ZERO).as_str(), "0s");
    }

    #[test]
    fn quantities_parse() {
        let q = |s: &str| Quantity(s.to_string());
        assert_eq!(cpu_millis(&q("250m")), Ok(250));
        assert_eq!(cpu_millis(&q("1")), Ok(1000));
        assert_eq!(cpu_millis(&q("0.5")), Ok(500));
        assert_eq!(cpu_millis(&q("1e3")), Ok(1_000_000));
        assert_eq!(memory_bytes(&q("64Mi")), Ok(64 << 20));
        assert_eq!(memory_bytes(&q("1G")), Ok(1_000_000_000));
        assert_eq!(memory_bytes(&q("128974848")), Ok(128_974_848));
        assert!(cpu_millis(&q("-1")).is_err());
        assert!(cpu_millis(&q("1.2.3")).is_err());
        assert!(cpu_millis(&q("5 cores")).is_err());
        assert!(memory_bytes(&q("99999999999Ei")).is_err());
        assert!(cpu_millis(&q("")).is_err());
    }

    #[test]
    fn quantities_format() {
        assert_eq!(cpu_quantity(1500).0, "1500m");
        assert_eq!(cpu_quantity(2000).0, "2");
        assert_eq!(memory_quantity(64 << 20).0, "64Mi");
        assert_eq!(memory_quantity(1000).0, "1000");
    }
}
