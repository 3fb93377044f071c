//! Request id and trace context: taken from the incoming request (W3C `traceparent`,
//! else B3 multi-header `X-B3-*`, else B3 single-header `b3`) or created, and passed to
//! every downstream call so a request can be followed through the mesh.

use axum::http::{HeaderMap, HeaderName, HeaderValue};
use rand::RngExt;

/// Header carrying the request id (created when absent).
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// W3C trace context header.
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// W3C vendor-specific trace state, forwarded unchanged.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const B3_TRACE_ID: HeaderName = HeaderName::from_static("x-b3-traceid");
const B3_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-spanid");
const B3_PARENT_SPAN_ID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
const B3_SINGLE: HeaderName = HeaderName::from_static("b3");

/// Longest request id accepted from a client; longer ones are replaced.
const MAX_REQUEST_ID_LEN: usize = 128;

/// How the trace context arrived, so it leaves in the same dialect(s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3Style {
    /// No B3 headers came in; only `traceparent` is sent.
    None,
    /// `X-B3-TraceId`/`X-B3-SpanId`/... headers.
    Multi,
    /// A single `b3` header.
    Single,
}

/// The trace context of one request as seen by this worker.
#[derive(Debug, Clone)]
pub struct TraceContext {
    /// Request id (from `x-request-id` or a new random one).
    pub request_id: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// This worker's span for the request, 16 hex digits.
    pub span_id: String,
    /// The caller's span, when one came in.
    pub parent_span_id: Option<String>,
    /// W3C trace flags (`01` = sampled).
    pub sampled: bool,
    /// Incoming `tracestate`, forwarded unchanged.
    pub tracestate: Option<HeaderValue>,
    /// Which B3 dialect to send downstream.
    pub b3: B3Style,
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0')
}

thread_local! {
    /// Ids need uniqueness, not secrecy: a small fast generator per thread, seeded from
    /// the OS-seeded thread generator, keeps id creation off the request's critical path.
    static ID_RNG: std::cell::RefCell<rand::rngs::SmallRng> =
        std::cell::RefCell::new(rand::make_rng());
}

/// `bytes` (at most 16) random bytes as lower-case hex, never all zeros.
fn random_hex(bytes: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let v: u128 = ID_RNG.with(|r| r.borrow_mut().random::<u128>()) | 1;
    let mut out = String::with_capacity(bytes * 2);
    for i in (0..bytes.min(16)).rev() {
        let b = (v >> (i * 8)) as u8;
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
    out
}

fn header<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Parses `00-<trace 32>-<parent 16>-<flags 2>`; other versions are read the same way
/// as the spec asks (future versions keep this prefix).
fn parse_traceparent(v: &str) -> Option<(String, String, bool)> {
    let mut parts = v.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    if version.len() != 2 || version == "ff" || !is_hex(trace, 32) || !is_hex(parent, 16) {
        return None;
    }
    let flags = u8::from_str_radix(flags.get(..2)?, 16).ok()?;
    Some((
        trace.to_ascii_lowercase(),
        parent.to_ascii_lowercase(),
        flags & 1 == 1,
    ))
}

/// B3 trace ids may be 64-bit; W3C needs 128, so short ids are left-padded with zeros.
fn widen_trace_id(id: &str) -> Option<String> {
    if is_hex(id, 32) {
        Some(id.to_ascii_lowercase())
    } else if is_hex(id, 16) {
        Some(format!("{:0>32}", id.to_ascii_lowercase()))
    } else {
        None
    }
}

fn b3_sampled(v: Option<&str>) -> Option<bool> {
    match v? {
        "1" | "d" | "true" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

impl TraceContext {
    /// Reads the context of an incoming request, creating whatever is missing.
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let request_id = header(headers, &REQUEST_ID)
            .filter(|v| !v.is_empty() && v.len() <= MAX_REQUEST_ID_LEN)
            .map(str::to_owned)
            .unwrap_or_else(|| random_hex(16));
        let tracestate = headers.get(&TRACESTATE).cloned();
        let span_id = random_hex(8);

        let b3_multi = header(headers, &B3_TRACE_ID).and_then(|t| {
            let trace = widen_trace_id(t)?;
            let parent = header(headers, &B3_SPAN_ID).filter(|s| is_hex(s, 16));
            Some((
                trace,
                parent.map(str::to_ascii_lowercase),
                b3_sampled(header(headers, &B3_SAMPLED)),
            ))
        });
        let b3_single = header(headers, &B3_SINGLE).and_then(|v| {
            let mut parts = v.split('-');
            let trace = widen_trace_id(parts.next()?)?;
            let span = parts
                .next()
                .filter(|s| is_hex(s, 16))
                .map(str::to_ascii_lowercase);
            Some((trace, span, b3_sampled(parts.next())))
        });
        let b3 = if b3_multi.is_some() {
            B3Style::Multi
        } else if b3_single.is_some() {
            B3Style::Single
        } else {
            B3Style::None
        };

        if let Some((trace_id, parent, sampled)) =
            header(headers, &TRACEPARENT).and_then(parse_traceparent)
        {
            return TraceContext {
                request_id,
                trace_id,
                span_id,
                parent_span_id: Some(parent),
                sampled,
                tracestate,
                b3,
            };
        }
        if let Some((trace_id, parent, sampled)) = b3_multi.or(b3_single) {
            return TraceContext {
                request_id,
                trace_id,
                span_id,
                parent_span_id: parent,
                sampled: sampled.unwrap_or(true),
                tracestate,
                b3,
            };
        }
        TraceContext {
            request_id,
            trace_id: random_hex(16),
            span_id,
            parent_span_id: None,
            sampled: true,
            tracestate,
            b3,
        }
    }

    /// The `traceparent` naming this worker's span as the parent of a downstream call.
    pub fn traceparent(&self) -> String {
        format!(
            "00-{}-{}-{}",
            self.trace_id,
            self.span_id,
            if self.sampled { "01" } else { "00" }
        )
    }

    /// Adds the propagation headers of a downstream call to `headers`.
    pub fn inject(&self, headers: &mut HeaderMap) {
        let mut put = |name: HeaderName, value: &str| {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(name, v);
            }
        };
        put(REQUEST_ID, &self.request_id);
        put(TRACEPARENT, &self.traceparent());
        let sampled = if self.sampled { "1" } else { "0" };
        match self.b3 {
            B3Style::None => {}
            B3Style::Multi => {
                put(B3_TRACE_ID, &self.trace_id);
                put(B3_SPAN_ID, &random_hex(8));
                put(B3_PARENT_SPAN_ID, &self.span_id);
                put(B3_SAMPLED, sampled);
            }
            B3Style::Single => {
                let v = format!(
                    "{}-{}-{}-{}",
                    self.trace_id,
                    random_hex(8),
                    sampled,
                    self.span_id
                );
                put(B3_SINGLE, &v);
            }
        }
        if let Some(ts) = &self.tracestate {
            headers.insert(TRACESTATE, ts.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn traceparent_is_continued() {
        let h = headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("x-request-id", "abc"),
        ]);
        let c = TraceContext::from_headers(&h);
        assert_eq!(c.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(c.parent_span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(c.request_id, "abc");
        assert_ne!(c.span_id, "00f067aa0ba902b7");
        let mut out = HeaderMap::new();
        c.inject(&mut out);
        let tp = out["traceparent"].to_str().unwrap();
        assert!(
            tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
            "{tp}"
        );
        assert!(tp.ends_with(&format!("{}-01", c.span_id)), "{tp}");
        assert!(out.get("x-b3-traceid").is_none());
    }

    #[test]
    fn invalid_traceparent_starts_a_new_trace() {
        let c = TraceContext::from_headers(&headers(&[(
            "traceparent",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        )]));
        assert_eq!(c.trace_id.len(), 32);
        assert_ne!(c.trace_id, "00000000000000000000000000000000");
        assert!(c.parent_span_id.is_none());
        assert_eq!(c.request_id.len(), 32);
    }

    #[test]
    fn b3_multi_is_read_widened_and_forwarded() {
        let c = TraceContext::from_headers(&headers(&[
            ("x-b3-traceid", "a3ce929d0e0e4736"),
            ("x-b3-spanid", "00f067aa0ba902b7"),
            ("x-b3-sampled", "0"),
        ]));
        assert_eq!(c.trace_id, "0000000000000000a3ce929d0e0e4736");
        assert!(!c.sampled);
        let mut out = HeaderMap::new();
        c.inject(&mut out);
        assert_eq!(out["x-b3-traceid"], c.trace_id.as_str());
        assert_eq!(out["x-b3-parentspanid"], c.span_id.as_str());
        assert_eq!(out["x-b3-sampled"], "0");
        assert!(out["traceparent"].to_str().unwrap().ends_with("-00"));
    }

    #[test]
    fn b3_single_is_read_and_forwarded() {
        let c = TraceContext::from_headers(&headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]));
        assert_eq!(c.trace_id, "80f198ee56343ba864fe8b2a57d3eff7");
        let mut out = HeaderMap::new();
        c.inject(&mut out);
        let b3 = out["b3"].to_str().unwrap();
        assert!(b3.starts_with("80f198ee56343ba864fe8b2a57d3eff7-"), "{b3}");
        assert!(b3.ends_with(&format!("-1-{}", c.span_id)), "{b3}");
    }
}
