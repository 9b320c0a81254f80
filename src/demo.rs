//! `portcullis demo`: the bundled quick-start config and a built-in upstream, so the README's
//! `curl` examples answer with no other process.
//!
//! The demo upstream is a small echo service on a free loopback port: it answers every
//! request with JSON describing what it received (method, path, query, the forwarding
//! headers the gateway set), which makes the gateway's rewrites and headers visible.

use crate::body::{self, Body};
use http::{header, HeaderValue, Request, Response};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;

/// The quick-start config, also shipped as `examples/quickstart.yaml`.
pub const QUICKSTART: &str = include_str!("../examples/quickstart.yaml");

/// Headers the echo shows back. Credentials are never echoed.
const SHOWN: &[&str] = &[
    "host",
    "user-agent",
    "accept",
    "content-type",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "via",
    "x-request-id",
];

/// Starts the echo upstream on `127.0.0.1:0` and returns its address.
pub async fn start_echo() -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let io = TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(
                        io,
                        service_fn(|req| async move { Ok::<_, Infallible>(echo(req)) }),
                    )
                    .await;
            });
        }
    });
    Ok(addr)
}

fn echo<B>(req: Request<B>) -> Response<Body> {
    let headers: serde_json::Map<String, serde_json::Value> = SHOWN
        .iter()
        .filter_map(|h| {
            req.headers()
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (h.to_string(), serde_json::Value::from(v)))
        })
        .collect();
    let v = serde_json::json!({
        "service": "portcullis-demo-upstream",
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "query": req.uri().query(),
        "headers": headers,
    });
    let mut res = Response::new(body::full(
        serde_json::to_vec_pretty(&v).unwrap_or_default(),
    ));
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
