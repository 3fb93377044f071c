//! A tiny target server on 127.0.0.1 for the loadgen tests.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::routing::get;

/// Goose's killswitch is process-global and the machine is small: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the target on its own runtime thread; it lives until the test process exits.
/// `/` answers at once, `/slow` after 200 ms, `/fail` with 503.
pub fn start_target() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("target runtime");
        rt.block_on(async move {
            let app = Router::new()
                .route("/", get(|| async { "ok" }))
                .route(
                    "/slow",
                    get(|| async {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        "slow"
                    }),
                )
                .route(
                    "/fail",
                    get(|| async { (axum::http::StatusCode::SERVICE_UNAVAILABLE, "no") }),
                );
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("addr"))
                .expect("send addr");
            axum::serve(listener, app).await.expect("serve");
        });
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("target started")
}

/// A port nobody listens on.
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}
