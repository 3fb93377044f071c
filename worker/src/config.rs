//! The worker's configuration: one JSON document per service, rendered by the operator
//! from a `ServiceMesh` and read once at start-up.
//!
//! Conventions, so the document is easy to render and to read:
//! - every duration is an integer number of **microseconds** in a field ending in `_us`
//!   (`"cpu_us": 25000` is 25 ms of CPU time);
//! - every size is an integer number of **bytes** in a field ending in `_bytes`;
//! - probabilities and rates are numbers in `[0, 1]`;
//! - unknown fields are rejected (`deny_unknown_fields`), so a typo is an error instead of
//!   a silently ignored setting;
//! - `"version": 1` is required; a future incompatible layout bumps it.
//!
//! A minimal document:
//!
//! ```json
//! {
//!   "version": 1,
//!   "service": "frontend",
//!   "endpoints": [
//!     { "path": "/", "cpu_us": 5000,
//!       "call_groups": [[{ "url": "http://backend:8080", "path": "/items" }]] }
//!   ]
//! }
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The only config layout this worker understands.
pub const CONFIG_VERSION: u32 = 1;

/// Paths served by the worker itself; endpoints may not use them.
pub const RESERVED_PATHS: [&str; 3] = ["/live", "/ready", "/metrics"];

/// Errors while loading or validating a [`WorkerConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read worker config file {path}: {source}")]
    Read {
        /// The file named on the command line.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The document is not valid JSON or does not match the layout.
    #[error("invalid worker config ({origin}) at `{field}`: {message}")]
    Parse {
        /// Where the document came from (a path, or "inline JSON").
        origin: String,
        /// Path of the offending field, e.g. `endpoints[0].delay.mode`.
        field: String,
        /// What serde expected.
        message: String,
    },
    /// The document parsed, but a value is out of range or inconsistent.
    #[error("invalid worker config: `{field}` = {value}: expected {expected}")]
    Invalid {
        /// Path of the offending field.
        field: String,
        /// The value found.
        value: String,
        /// What is accepted.
        expected: String,
    },
    /// Neither a file nor inline JSON was given.
    #[error(
        "no worker config given: pass --config PATH (env MESHBENCH_WORKER_CONFIG) \
         or --config-json JSON (env MESHBENCH_WORKER_CONFIG_JSON)"
    )]
    Missing,
}

/// Result alias for this module.
pub type Result<T, E = ConfigError> = std::result::Result<T, E>;

/// The whole configuration of one worker process (one replica of one service).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerConfig {
    /// Layout version; must be [`CONFIG_VERSION`] (1).
    pub version: u32,
    /// Service name, used in the `service` metric label, logs and response envelopes.
    pub service: String,
    /// Pod (replica) name. When absent: env `POD_NAME`, else the hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// TCP port to listen on (all interfaces). `--listen` overrides address and port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Time after start during which `/ready` answers 503 (the process already serves).
    #[serde(default)]
    pub startup_delay_us: u64,
    /// When set, `/ready` answers 503 while the requests in flight (all endpoints) are
    /// at least this many — the prototype's readiness-probe experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readiness_max_in_flight: Option<u32>,
    /// CPU burned in the background while idle, as a fraction of one core (0.05 = 5 %).
    /// Values above 1 use several threads.
    #[serde(default)]
    pub idle_cpu_cores: f64,
    /// Memory allocated, touched and held for the whole life of the process.
    #[serde(default)]
    pub baseline_memory_bytes: u64,
    /// After SIGTERM, how long in-flight requests may take to finish before exit.
    #[serde(default = "default_drain_grace_us")]
    pub drain_grace_us: u64,
    /// Largest request body accepted; larger bodies are answered 413.
    #[serde(default = "default_max_request_body_bytes")]
    pub max_request_body_bytes: u64,
    /// Threads that burn CPU for requests at the same time. Default: the number of CPUs
    /// the process may use. Requests beyond it wait for a thread, as in a real service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_threads: Option<u32>,
    /// The endpoints served. `(path, method)` pairs must be unique.
    pub endpoints: Vec<EndpointConfig>,
}

/// HTTP methods an endpoint or downstream call can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// `GET` (the default).
    #[default]
    Get,
    /// `POST`.
    Post,
    /// `PUT`.
    Put,
    /// `PATCH`.
    Patch,
    /// `DELETE`.
    Delete,
}

impl Method {
    /// The method as an `http` type.
    pub fn as_http(self) -> axum::http::Method {
        match self {
            Method::Get => axum::http::Method::GET,
            Method::Post => axum::http::Method::POST,
            Method::Put => axum::http::Method::PUT,
            Method::Patch => axum::http::Method::PATCH,
            Method::Delete => axum::http::Method::DELETE,
        }
    }

    /// Upper-case name, as on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// One endpoint: what a request to `method path` costs and whom it calls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Absolute path, e.g. `/api/items`; not one of [`RESERVED_PATHS`].
    pub path: String,
    /// HTTP method (default `GET`).
    #[serde(default)]
    pub method: Method,
    /// CPU time burned per request, measured on the thread's CPU clock.
    #[serde(default)]
    pub cpu_us: u64,
    /// Memory allocated, touched and held for the duration of each request.
    #[serde(default)]
    pub memory_bytes: u64,
    /// Added delay; none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<DelayConfig>,
    /// Size of the response body. The JSON envelope is padded to exactly this size;
    /// when it is smaller than the envelope, the envelope is sent as is. 0 = no padding.
    #[serde(default)]
    pub response_bytes: u64,
    /// Probability that a request is answered 500 (after doing its work).
    #[serde(default)]
    pub error_rate: f64,
    /// Load shedding: more concurrent requests than this on the endpoint are answered
    /// 503 with `Retry-After`. None = unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
    /// What a downstream timeout does to this request.
    #[serde(default)]
    pub on_downstream_timeout: TimeoutPolicy,
    /// Seed for every random draw of this endpoint (delay, error injection, call
    /// probabilities). Unseeded endpoints draw from the thread-local generator.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// Downstream calls: the groups run in parallel, the calls inside a group in order.
    #[serde(default)]
    pub call_groups: Vec<Vec<CallConfig>>,
}

/// What a downstream timeout does to the calling request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimeoutPolicy {
    /// Answer 504 (the default).
    #[default]
    Fail,
    /// Record the timeout in the envelope and metrics, and carry on.
    Ignore,
}

/// An added delay: a distribution and how it combines with the work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelayConfig {
    /// Where the delay values come from.
    pub distribution: DelayDistribution,
    /// How the drawn value is applied (default `after_work`).
    #[serde(default)]
    pub mode: DelayMode,
}

/// Delay distributions, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum DelayDistribution {
    /// Always `value_us`.
    Fixed {
        /// The delay.
        value_us: u64,
    },
    /// Uniform in `[min_us, max_us]`.
    Uniform {
        /// Lower bound.
        min_us: u64,
        /// Upper bound (≥ `min_us`).
        max_us: u64,
    },
    /// Exponential with the given mean.
    Exponential {
        /// Mean (> 0).
        mean_us: u64,
    },
    /// Log-normal: `ln(delay)` is normal with median `median_us` (= e^mu) and `sigma`.
    LogNormal {
        /// Median (> 0).
        median_us: u64,
        /// Standard deviation of `ln(delay)` (≥ 0).
        sigma: f64,
    },
}

/// How a drawn delay combines with the work of the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DelayMode {
    /// Sleep for the drawn value after CPU, memory and downstream calls (the default).
    #[default]
    AfterWork,
    /// The response is not sent before the drawn value has passed since the request
    /// arrived (the prototype's semantics, used by imported meshes).
    MinimumTotal,
}

/// One downstream call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallConfig {
    /// Absolute base URL, `http://host:port` (no path), e.g. `http://backend:8080`.
    pub url: String,
    /// Path called on the target (default `/`); may carry a query string.
    #[serde(default = "default_call_path")]
    pub path: String,
    /// HTTP method (default `GET`).
    #[serde(default)]
    pub method: Method,
    /// Probability that the call is made at all (default 1).
    #[serde(default = "one")]
    pub probability: f64,
    /// How many times the call is made, one after the other (default 1).
    #[serde(default = "one_u32")]
    pub repeat: u32,
    /// Timeout of each attempt, connect to last body byte (default 10 s).
    #[serde(default = "default_call_timeout_us")]
    pub timeout_us: u64,
    /// Label for metrics and the envelope; default `url` + `path`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl CallConfig {
    /// The metric label / envelope name of this call.
    pub fn target(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("{}{}", self.url.trim_end_matches('/'), self.path))
    }
}

fn default_port() -> u16 {
    8080
}
fn default_drain_grace_us() -> u64 {
    30_000_000
}
fn default_max_request_body_bytes() -> u64 {
    1 << 20
}
fn default_call_path() -> String {
    "/".to_owned()
}
fn one() -> f64 {
    1.0
}
fn one_u32() -> u32 {
    1
}
fn default_call_timeout_us() -> u64 {
    10_000_000
}

/// Upper bounds that keep a config from exhausting the machine by mistake.
const MAX_CPU_US: u64 = 600_000_000;
const MAX_MEMORY_BYTES: u64 = 64 << 30;
const MAX_DURATION_US: u64 = 3_600_000_000;
const MAX_REPEAT: u32 = 1000;

impl WorkerConfig {
    /// Parses and validates a JSON document; `origin` names it in error messages.
    pub fn from_json(text: &str, origin: &str) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let config: WorkerConfig =
            serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
                origin: origin.to_owned(),
                field: e.path().to_string(),
                message: e.inner().to_string(),
            })?;
        config.validate()?;
        Ok(config)
    }

    /// Reads, parses and validates a JSON file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text, &path.display().to_string())
    }

    /// Checks ranges and consistency that the types alone cannot express.
    pub fn validate(&self) -> Result<()> {
        if self.version != CONFIG_VERSION {
            return Err(invalid("version", self.version, "1"));
        }
        if self.service.is_empty() || self.service.len() > 253 {
            return Err(invalid(
                "service",
                format!("{:?}", self.service),
                "a non-empty name of at most 253 characters",
            ));
        }
        if !(self.idle_cpu_cores.is_finite() && (0.0..=64.0).contains(&self.idle_cpu_cores)) {
            return Err(invalid(
                "idle_cpu_cores",
                self.idle_cpu_cores,
                "a fraction of a core between 0 and 64",
            ));
        }
        if self.baseline_memory_bytes > MAX_MEMORY_BYTES {
            return Err(invalid(
                "baseline_memory_bytes",
                self.baseline_memory_bytes,
                "at most 64 GiB",
            ));
        }
        for (name, v) in [
            ("startup_delay_us", self.startup_delay_us),
            ("drain_grace_us", self.drain_grace_us),
        ] {
            if v > MAX_DURATION_US {
                return Err(invalid(name, v, "at most 3600000000 (one hour)"));
            }
        }
        if self.max_request_body_bytes > MAX_MEMORY_BYTES {
            return Err(invalid(
                "max_request_body_bytes",
                self.max_request_body_bytes,
                "at most 64 GiB",
            ));
        }
        if let Some(t) = self.cpu_threads
            && !(1..=1024).contains(&t)
        {
            return Err(invalid("cpu_threads", t, "between 1 and 1024"));
        }
        if self.readiness_max_in_flight == Some(0) {
            return Err(invalid(
                "readiness_max_in_flight",
                0,
                "at least 1, or absent",
            ));
        }
        let mut seen = HashSet::new();
        for (i, ep) in self.endpoints.iter().enumerate() {
            ep.validate(&format!("endpoints[{i}]"))?;
            if !seen.insert((ep.path.as_str(), ep.method)) {
                return Err(invalid(
                    &format!("endpoints[{i}]"),
                    format!("{} {}", ep.method.as_str(), ep.path),
                    "a (method, path) pair not used by an earlier endpoint",
                ));
            }
        }
        Ok(())
    }

    /// The startup delay as a duration.
    pub fn startup_delay(&self) -> Duration {
        Duration::from_micros(self.startup_delay_us)
    }

    /// The drain grace period as a duration.
    pub fn drain_grace(&self) -> Duration {
        Duration::from_micros(self.drain_grace_us)
    }

    /// The default listen address, `0.0.0.0:<port>`.
    pub fn listen_addr(&self) -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], self.port))
    }
}

impl EndpointConfig {
    fn validate(&self, at: &str) -> Result<()> {
        if !self.path.starts_with('/') || self.path.contains(['?', '#', '{', '}', '*']) {
            return Err(invalid(
                &format!("{at}.path"),
                format!("{:?}", self.path),
                "an absolute path starting with '/' without query, fragment or wildcards",
            ));
        }
        if RESERVED_PATHS.contains(&self.path.as_str()) {
            return Err(invalid(
                &format!("{at}.path"),
                format!("{:?}", self.path),
                "a path other than /live, /ready and /metrics (served by the worker)",
            ));
        }
        if self.cpu_us > MAX_CPU_US {
            return Err(invalid(
                &format!("{at}.cpu_us"),
                self.cpu_us,
                "at most 600000000",
            ));
        }
        if self.memory_bytes > MAX_MEMORY_BYTES {
            return Err(invalid(
                &format!("{at}.memory_bytes"),
                self.memory_bytes,
                "at most 64 GiB",
            ));
        }
        if self.response_bytes > MAX_MEMORY_BYTES {
            return Err(invalid(
                &format!("{at}.response_bytes"),
                self.response_bytes,
                "at most 64 GiB",
            ));
        }
        check_probability(&format!("{at}.error_rate"), self.error_rate)?;
        if self.max_in_flight == Some(0) {
            return Err(invalid(
                &format!("{at}.max_in_flight"),
                0,
                "at least 1, or absent",
            ));
        }
        if let Some(delay) = &self.delay {
            delay
                .distribution
                .validate(&format!("{at}.delay.distribution"))?;
        }
        for (g, group) in self.call_groups.iter().enumerate() {
            for (c, call) in group.iter().enumerate() {
                call.validate(&format!("{at}.call_groups[{g}][{c}]"))?;
            }
        }
        Ok(())
    }
}

impl DelayDistribution {
    fn validate(&self, at: &str) -> Result<()> {
        let check = |field: &str, v: u64| {
            if v > MAX_DURATION_US {
                Err(invalid(
                    &format!("{at}.{field}"),
                    v,
                    "at most 3600000000 (one hour)",
                ))
            } else {
                Ok(())
            }
        };
        match *self {
            DelayDistribution::Fixed { value_us } => check("value_us", value_us),
            DelayDistribution::Uniform { min_us, max_us } => {
                check("min_us", min_us)?;
                check("max_us", max_us)?;
                if max_us < min_us {
                    return Err(invalid(
                        &format!("{at}.max_us"),
                        max_us,
                        format!("at least min_us ({min_us})"),
                    ));
                }
                Ok(())
            }
            DelayDistribution::Exponential { mean_us } => {
                check("mean_us", mean_us)?;
                if mean_us == 0 {
                    return Err(invalid(&format!("{at}.mean_us"), 0, "greater than 0"));
                }
                Ok(())
            }
            DelayDistribution::LogNormal { median_us, sigma } => {
                check("median_us", median_us)?;
                if median_us == 0 {
                    return Err(invalid(&format!("{at}.median_us"), 0, "greater than 0"));
                }
                if !(sigma.is_finite() && (0.0..=10.0).contains(&sigma)) {
                    return Err(invalid(&format!("{at}.sigma"), sigma, "between 0 and 10"));
                }
                Ok(())
            }
        }
    }
}

impl CallConfig {
    fn validate(&self, at: &str) -> Result<()> {
        let uri: axum::http::Uri = self.url.parse().map_err(|_| {
            invalid(
                &format!("{at}.url"),
                format!("{:?}", self.url),
                "an absolute base URL like http://backend:8080",
            )
        })?;
        let bare = uri.path() == "/" || uri.path().is_empty();
        if uri.scheme_str() != Some("http") || uri.authority().is_none() || !bare {
            return Err(invalid(
                &format!("{at}.url"),
                format!("{:?}", self.url),
                "an http:// base URL with host and port and no path (https is not supported)",
            ));
        }
        if !self.path.starts_with('/') || self.path.parse::<axum::http::Uri>().is_err() {
            return Err(invalid(
                &format!("{at}.path"),
                format!("{:?}", self.path),
                "an absolute path starting with '/'",
            ));
        }
        check_probability(&format!("{at}.probability"), self.probability)?;
        if !(1..=MAX_REPEAT).contains(&self.repeat) {
            return Err(invalid(
                &format!("{at}.repeat"),
                self.repeat,
                "between 1 and 1000",
            ));
        }
        if self.timeout_us == 0 || self.timeout_us > MAX_DURATION_US {
            return Err(invalid(
                &format!("{at}.timeout_us"),
                self.timeout_us,
                "between 1 and 3600000000 (one hour)",
            ));
        }
        Ok(())
    }
}

fn check_probability(at: &str, p: f64) -> Result<()> {
    if p.is_finite() && (0.0..=1.0).contains(&p) {
        Ok(())
    } else {
        Err(invalid(at, p, "a probability between 0 and 1"))
    }
}

fn invalid(field: &str, value: impl std::fmt::Display, expected: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field: field.to_owned(),
        value: value.to_string(),
        expected: expected.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<WorkerConfig> {
        WorkerConfig::from_json(text, "test")
    }

    #[test]
    fn minimal_document_gets_defaults() {
        let c = parse(r#"{"version":1,"service":"a","endpoints":[{"path":"/"}]}"#).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.drain_grace_us, 30_000_000);
        assert_eq!(c.endpoints[0].method, Method::Get);
        assert_eq!(c.endpoints[0].on_downstream_timeout, TimeoutPolicy::Fail);
    }

    #[test]
    fn full_document_round_trips() {
        let text = r#"{
          "version": 1, "service": "front", "pod": "front-0", "port": 9000,
          "startup_delay_us": 1000, "readiness_max_in_flight": 5, "idle_cpu_cores": 0.05,
          "baseline_memory_bytes": 1024, "drain_grace_us": 5000000,
          "max_request_body_bytes": 4096, "cpu_threads": 2,
          "endpoints": [{
            "path": "/a", "method": "POST", "cpu_us": 25000, "memory_bytes": 1048576,
            "delay": {"distribution": {"kind": "log_normal", "median_us": 1000, "sigma": 0.5},
                      "mode": "minimum_total"},
            "response_bytes": 512, "error_rate": 0.01, "max_in_flight": 10,
            "on_downstream_timeout": "ignore", "seed": 7,
            "call_groups": [[{"url": "http://b:8080", "path": "/x", "method": "GET",
                              "probability": 0.5, "repeat": 2, "timeout_us": 100000,
                              "name": "b-x"}]]
          }]
        }"#;
        let c = parse(text).unwrap();
        let again = parse(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(c, again);
        assert_eq!(c.endpoints[0].call_groups[0][0].target(), "b-x");
    }

    #[test]
    fn unknown_field_names_its_path() {
        let err = parse(r#"{"version":1,"service":"a","endpoints":[{"path":"/","cpu":5}]}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("endpoints[0]"), "{err}");
        assert!(err.contains("cpu"), "{err}");
    }

    #[test]
    fn wrong_version_is_rejected() {
        let err = parse(r#"{"version":2,"service":"a","endpoints":[]}"#).unwrap_err();
        assert!(err.to_string().contains("`version` = 2"), "{err}");
    }

    #[test]
    fn out_of_range_values_are_rejected() {
        for (doc, field) in [
            (
                r#"{"path":"/","error_rate":1.5}"#,
                "endpoints[0].error_rate",
            ),
            (r#"{"path":"live"}"#, "endpoints[0].path"),
            (r#"{"path":"/metrics"}"#, "endpoints[0].path"),
            (
                r#"{"path":"/","delay":{"distribution":{"kind":"uniform","min_us":5,"max_us":1}}}"#,
                "endpoints[0].delay.distribution.max_us",
            ),
            (
                r#"{"path":"/","call_groups":[[{"url":"backend:8080"}]]}"#,
                "endpoints[0].call_groups[0][0].url",
            ),
            (
                r#"{"path":"/","call_groups":[[{"url":"http://b:1/x"}]]}"#,
                "endpoints[0].call_groups[0][0].url",
            ),
            (
                r#"{"path":"/","call_groups":[[{"url":"http://b:1","repeat":0}]]}"#,
                "endpoints[0].call_groups[0][0].repeat",
            ),
        ] {
            let text = format!(r#"{{"version":1,"service":"a","endpoints":[{doc}]}}"#);
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(&format!("`{field}`")), "{doc}: {err}");
        }
    }

    #[test]
    fn duplicate_endpoints_are_rejected() {
        let err = parse(
            r#"{"version":1,"service":"a","endpoints":[{"path":"/"},{"path":"/","method":"GET"}]}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("endpoints[1]"), "{err}");
    }
}
