//! The HTTP/1.1 client the load requests go through.
//!
//! Goose gives every user a reqwest client, and reqwest's general-purpose path costs more
//! CPU per request than everything else a request does here: perf at a fixed 5000 rps
//! showed a URL parse with an IDNA pass, clones of the connector and client services, a
//! hashed pool lookup and formatting on every send. A load generator sends one prepared
//! request to one authority again and again, so this client keeps only that: hyper's
//! HTTP/1.1 client connections (what reqwest and oha use underneath), a LIFO stack of idle
//! ones — so the connection count follows the requests in flight, as with a pool — and the
//! request's parts built once.
//!
//! Failures keep their source error and are formatted only when someone asks (the
//! preflight's message), so a failing target costs no more per request than a healthy one.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;

use crate::collector::Outcome;

type Sender = SendRequest<Full<Bytes>>;

/// Why a request got no complete response.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No complete response within the timeout.
    Timeout(Duration),
    /// Connecting failed.
    Connect(std::io::Error),
    /// The HTTP exchange failed (connection closed or reset, malformed response).
    Http(hyper::Error),
}

impl Failure {
    /// How the request is counted.
    pub fn outcome(&self) -> Outcome {
        match self {
            Failure::Timeout(_) => Outcome::Timeout,
            Failure::Connect(_) => Outcome::Connection,
            Failure::Http(e) if e.is_parse() || e.is_parse_status() || e.is_user() => {
                Outcome::Other
            }
            Failure::Http(_) => Outcome::Connection,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Timeout(t) => write!(f, "no complete response within {t:?}"),
            Failure::Connect(e) => write!(f, "cannot connect: {e}"),
            Failure::Http(e) => {
                write!(f, "{e}")?;
                let mut src = std::error::Error::source(e);
                while let Some(s) = src {
                    write!(f, ": {s}")?;
                    src = s.source();
                }
                Ok(())
            }
        }
    }
}

/// Why a client cannot be made for a target URL.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClientError {
    /// Not `http`.
    #[error("scheme {scheme:?} is not supported; the load generator speaks plain http")]
    Scheme {
        /// The URL's scheme.
        scheme: String,
    },
    /// The URL has no host.
    #[error("the URL has no host")]
    NoHost,
    /// The path and query are not a valid request target.
    #[error("path {origin:?}: {source}")]
    Path {
        /// Path and query.
        origin: String,
        /// Why it is invalid.
        source: hyper::http::uri::InvalidUri,
    },
    /// The authority is not a valid `Host` header.
    #[error("host {authority:?}: {source}")]
    Host {
        /// Host and port as sent.
        authority: String,
        /// Why it is invalid.
        source: header::InvalidHeaderValue,
    },
}

/// One target, one prepared request, a stack of idle connections.
pub(crate) struct LoadClient {
    host: String,
    port: u16,
    method: Method,
    /// Origin form (path and query): what an HTTP/1.1 request line carries.
    path: Uri,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
    idle: Mutex<Vec<Sender>>,
}

impl LoadClient {
    /// A client for `url` (plain `http` only: the mesh's services speak cleartext HTTP/1.1).
    /// `headers` are sent as given, plus `Host`, and `User-Agent`/`Accept` unless set.
    pub fn new(
        method: Method,
        url: &url::Url,
        headers: &HeaderMap,
        body: Option<&str>,
        timeout: Duration,
    ) -> Result<Self, ClientError> {
        if url.scheme() != "http" {
            return Err(ClientError::Scheme {
                scheme: url.scheme().to_owned(),
            });
        }
        let host = url
            .host_str()
            .ok_or(ClientError::NoHost)?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let mut origin = url.path().to_owned();
        if let Some(q) = url.query() {
            origin.push('?');
            origin.push_str(q);
        }
        let path = match origin.parse::<Uri>() {
            Ok(p) => p,
            Err(source) => return Err(ClientError::Path { origin, source }),
        };
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let mut all = headers.clone();
        all.insert(
            header::HOST,
            HeaderValue::from_str(&authority).map_err(|source| ClientError::Host {
                authority: authority.clone(),
                source,
            })?,
        );
        all.entry(header::USER_AGENT)
            .or_insert(HeaderValue::from_static(concat!(
                "meshbench-loadgen/",
                env!("CARGO_PKG_VERSION")
            )));
        all.entry(header::ACCEPT)
            .or_insert(HeaderValue::from_static("*/*"));
        Ok(Self {
            host,
            port,
            method,
            path,
            headers: all,
            body: body.map(|b| Bytes::from(b.to_owned())).unwrap_or_default(),
            timeout,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Sends the request once and reads the whole response; the status, or why not.
    pub async fn send(&self) -> Result<u16, Failure> {
        match tokio::time::timeout(self.timeout, self.exchange()).await {
            Ok(r) => r,
            Err(_) => Err(Failure::Timeout(self.timeout)),
        }
    }

    /// Connections currently idle (for tests).
    #[cfg(test)]
    fn idle_count(&self) -> usize {
        self.idle.lock().map(|v| v.len()).unwrap_or(0)
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut r = Request::new(Full::new(self.body.clone()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.path.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }

    fn checkout(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(c) = idle.pop() {
            if !c.is_closed() {
                return Some(c);
            }
        }
        None
    }

    /// Returns a connection whose response was read in full. It may not be ready for the
    /// next request yet — its task has not polled for one — so readiness is awaited at
    /// checkout, where it is nearly always immediate, not required here.
    fn checkin(&self, c: Sender) {
        if !c.is_closed() {
            self.idle.lock().unwrap_or_else(|p| p.into_inner()).push(c);
        }
    }

    /// An idle connection ready for a request, or a new one. The flag says it was reused.
    async fn connection(&self) -> Result<(Sender, bool), Failure> {
        while let Some(mut c) = self.checkout() {
            if c.ready().await.is_ok() {
                return Ok((c, true));
            }
        }
        Ok((self.connect().await?, false))
    }

    async fn connect(&self) -> Result<Sender, Failure> {
        let connected = match meshbench_common::names::lookup(&self.host) {
            Some(ip) => tokio::net::TcpStream::connect((ip, self.port)).await,
            None => tokio::net::TcpStream::connect((self.host.as_str(), self.port)).await,
        };
        let stream = connected.map_err(Failure::Connect)?;
        // Small requests must leave at once, not wait for Nagle's timer.
        stream.set_nodelay(true).map_err(Failure::Connect)?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(Failure::Http)?;
        // The connection task ends when the sender is dropped or the peer closes.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn exchange(&self) -> Result<u16, Failure> {
        let (mut conn, reused) = self.connection().await?;
        let resp = match conn.try_send_request(self.request()).await {
            Ok(r) => r,
            Err(mut e) => match e.take_message() {
                // The idle connection was closed by the peer before the request went out
                // (a keep-alive timeout racing the checkout): nothing reached the target,
                // so send it on a fresh connection.
                Some(req) if reused => {
                    conn = self.connect().await?;
                    conn.send_request(req).await.map_err(Failure::Http)?
                }
                _ => return Err(Failure::Http(e.into_error())),
            },
        };
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(Failure::Http)?;
        }
        self.checkin(conn);
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::TcpListener;

    fn url(addr: std::net::SocketAddr, path: &str) -> url::Url {
        url::Url::parse(&format!("http://{addr}{path}")).expect("url")
    }

    /// A raw HTTP/1.1 server: answers each request with `reply(request_text)`, and closes
    /// the connection after `per_conn` responses. Counts connections.
    async fn raw_server(
        per_conn: usize,
        reply: fn(&str) -> String,
    ) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let conns = Arc::new(AtomicUsize::new(0));
        let c = conns.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                c.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut served = 0;
                    while served < per_conn {
                        let mut chunk = [0u8; 4096];
                        let n = match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => n,
                        };
                        buf.extend_from_slice(&chunk[..n]);
                        let text = String::from_utf8_lossy(&buf).into_owned();
                        let Some(end) = text.find("\r\n\r\n") else {
                            continue;
                        };
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() < end + 4 + len {
                            continue;
                        }
                        let req = String::from_utf8_lossy(&buf[..end + 4 + len]).into_owned();
                        buf.drain(..end + 4 + len);
                        served += 1;
                        if s.write_all(reply(&req).as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, conns)
    }

    /// A client that GETs `/` on `addr`.
    fn get(addr: std::net::SocketAddr, timeout: Duration) -> LoadClient {
        LoadClient::new(
            Method::GET,
            &url(addr, "/"),
            &HeaderMap::new(),
            None,
            timeout,
        )
        .expect("client")
    }

    fn echo(req: &str) -> String {
        format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{req}",
            req.len()
        )
    }

    #[tokio::test]
    async fn an_idle_connection_is_reused() {
        let (addr, conns) = raw_server(usize::MAX, echo).await;
        let c = get(addr, Duration::from_secs(5));
        for _ in 0..3 {
            assert_eq!(c.send().await.expect("send"), 200);
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1, "one connection, reused");
        assert_eq!(c.idle_count(), 1);
    }

    /// With `--worker-threads 2` a request and its connection's task may run on different
    /// threads; the idle stack must still hand the one connection from request to request.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sequential_requests_share_one_connection_across_threads() {
        let (addr, conns) = raw_server(usize::MAX, echo).await;
        let c = Arc::new(get(addr, Duration::from_secs(5)));
        for _ in 0..200 {
            let c = c.clone();
            // Each request from a fresh task, so it may run on either thread.
            let status = tokio::spawn(async move { c.send().await })
                .await
                .expect("task")
                .expect("send");
            assert_eq!(status, 200);
        }
        assert_eq!(conns.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_wire_carries_method_path_host_headers_and_body() {
        static SEEN: Mutex<String> = Mutex::new(String::new());
        fn record(req: &str) -> String {
            *SEEN.lock().expect("lock") = req.to_owned();
            "HTTP/1.1 201 Created\r\ncontent-length: 0\r\n\r\n".to_owned()
        }
        let (addr, _) = raw_server(usize::MAX, record).await;
        let mut headers = HeaderMap::new();
        headers.insert("x-test", HeaderValue::from_static("yes"));
        let c = LoadClient::new(
            Method::POST,
            &url(addr, "/p?q=1"),
            &headers,
            Some("payload"),
            Duration::from_secs(5),
        )
        .expect("client");
        assert_eq!(c.send().await.expect("send"), 201);
        let seen = SEEN.lock().expect("lock").clone();
        assert!(seen.starts_with("POST /p?q=1 HTTP/1.1\r\n"), "{seen}");
        assert!(seen.contains(&format!("host: {addr}\r\n")), "{seen}");
        assert!(seen.contains("x-test: yes\r\n"), "{seen}");
        assert!(seen.contains("content-length: 7\r\n"), "{seen}");
        assert!(seen.ends_with("\r\n\r\npayload"), "{seen}");
    }

    #[tokio::test]
    async fn connections_the_server_closes_are_not_reused() {
        // One response per connection, then the server closes it; every request must still
        // succeed, each on its own connection.
        let (addr, conns) = raw_server(1, echo).await;
        let c = get(addr, Duration::from_secs(5));
        for i in 0..5 {
            assert_eq!(c.send().await.expect("send"), 200, "request {i}");
            // Give the close time to arrive, as between two paced requests.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(conns.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn failures_are_classified() {
        // Refused.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let c = get(addr, Duration::from_secs(5));
        let e = c.send().await.expect_err("refused");
        assert_eq!(e.outcome(), Outcome::Connection);
        assert!(e.to_string().contains("cannot connect"), "{e}");

        // Accepts and never answers: a timeout.
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = l.accept().await {
                held.push(s);
            }
        });
        let c = get(addr, Duration::from_millis(200));
        let e = c.send().await.expect_err("timeout");
        assert_eq!(e.outcome(), Outcome::Timeout);
        hold.abort();

        // Garbage instead of HTTP.
        fn garbage(_: &str) -> String {
            "SMTP ready\r\n\r\n".to_owned()
        }
        let (addr, _) = raw_server(usize::MAX, garbage).await;
        let c = get(addr, Duration::from_secs(5));
        let e = c.send().await.expect_err("garbage");
        assert_eq!(e.outcome(), Outcome::Other, "{e}");
    }

    #[test]
    fn only_plain_http_is_accepted() {
        let u = url::Url::parse("https://example.com/").expect("url");
        let e = LoadClient::new(Method::GET, &u, &HeaderMap::new(), None, Duration::ZERO)
            .err()
            .expect("https refused")
            .to_string();
        assert!(e.contains("plain http"), "{e}");
    }
}
