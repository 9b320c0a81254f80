//! `concurrency_limit`: at most `max` requests in flight per key on this node.
//!
//! A request takes an in-flight slot before the backend is called and gives it back when its
//! response body has been sent to the end — or dropped, when the client goes away — not when
//! the response headers leave: a slow download still occupies the backend. The slot travels
//! from the request side to the response body in [`Ctx::traffic`](super::Ctx::traffic).
//!
//! Over the limit: 429 with `Retry-After: 1` when the key names a client (it is over its
//! share), 503 when the key is `route` alone (the route's capacity is used up; no one client is
//! at fault).
//!
//! Counts are node-local on purpose, also with `state: redis`: an in-flight count in Redis
//! would outlive a node that crashed mid-request, and concurrency protects the capacity this
//! node and its backends have now.

use super::rate_limit::{KeyPart, KeySpec};
use super::{Build, BuildCx, BuildEnv, BuildError, Ctx, Flow, Policy};
use crate::body::Body;
use crate::config::traffic::ConcurrencyLimitConfig;
use crate::error::GatewayError;
use crate::state::memory::Permit;
use crate::state::StateSlot;
use http::{Request, Response};
use http_body::{Body as HttpBody, Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

pub struct ConcurrencyLimit {
    key: KeySpec,
    max: u32,
    route_wide: bool,
    /// `cl:{route}:{max}:`, the in-flight key up to the key parts.
    prefix: String,
    state: StateSlot,
}

impl Build for ConcurrencyLimit {
    type Config = ConcurrencyLimitConfig;

    fn build(cfg: &ConcurrencyLimitConfig, cx: &BuildCx<'_>) -> Result<Self, BuildError> {
        Self::build_in(cfg, cx.env).map_err(BuildError::from)
    }
}

impl ConcurrencyLimit {
    /// Built alone: a private memory store, no route scope, no consumers (unit tests).
    pub fn build_alone(cfg: &ConcurrencyLimitConfig) -> Result<Self, String> {
        let slot = StateSlot::default();
        let consumers = Default::default();
        Self::build_in(
            cfg,
            &BuildEnv {
                route: "",
                params: &[],
                state: &slot,
                consumer_limits: &consumers,
            },
        )
    }

    pub fn build_in(cfg: &ConcurrencyLimitConfig, env: &BuildEnv<'_>) -> Result<Self, String> {
        let key = KeySpec::parse(cfg.key.as_ref(), "key", env.params)?;
        if !(1..=u64::from(u32::MAX)).contains(&cfg.max) {
            return Err(super::field_error(
                "max",
                "expected a number of requests from 1 to 4294967295",
            ));
        }
        Ok(ConcurrencyLimit {
            route_wide: key.parts() == [KeyPart::Route],
            prefix: format!("cl:{}:{}:", env.route, cfg.max),
            key,
            max: cfg.max as u32,
            state: env.state.clone(),
        })
    }
}

impl Policy for ConcurrencyLimit {
    async fn on_request(
        &self,
        cx: &mut Ctx,
        req: &mut Request<Body>,
    ) -> Result<Flow, GatewayError> {
        let mut key = String::with_capacity(self.prefix.len() + 32);
        key.push_str(&self.prefix);
        self.key.write(cx, req.headers(), &mut key);
        match self.state.store().memory().acquire(&key, self.max) {
            Some(permit) => {
                cx.traffic.hold(permit);
                Ok(Flow::Continue)
            }
            None => Err(GatewayError::ConcurrencyLimited {
                max: u64::from(self.max),
                route_wide: self.route_wide,
            }),
        }
    }

    async fn on_response(
        &self,
        cx: &mut Ctx,
        res: &mut Response<Body>,
    ) -> Result<(), GatewayError> {
        cx.traffic.finish(res);
        Ok(())
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds in-flight permits until it has been sent (or dropped).
    pub struct Held {
        #[pin]
        inner: Body,
        permits: Vec<Permit>,
    }
}

impl Held {
    pub fn new(inner: Body, permits: Vec<Permit>) -> Held {
        Held { inner, permits }
    }
}

impl HttpBody for Held {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if let Poll::Ready(None) = r {
            // Sent to the end: free the slots now rather than whenever the body is dropped.
            this.permits.clear();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OneOrMany;
    use http_body_util::BodyExt;

    fn cx() -> Ctx {
        Ctx {
            request_id: http::HeaderValue::from_static("t"),
            client: "192.0.2.7:5555".parse().unwrap(),
            tls: false,
            started: std::time::Instant::now(),
            route: 0,
            route_name: "r".into(),
            params: Default::default(),
            path: "/".into(),
            target: None,
            upstream_latency: None,
            identity: None,
            client_cert: None,
            consumer: None,
            api_key: None,
            traffic: Default::default(),
            trace: None,
            raw_head: None,
        }
    }

    fn policy(key: &str, max: u64) -> ConcurrencyLimit {
        ConcurrencyLimit::build_alone(&ConcurrencyLimitConfig {
            key: Some(OneOrMany(vec![key.into()])),
            max,
        })
        .unwrap()
    }

    async fn enter(p: &ConcurrencyLimit, cx: &mut Ctx) -> Result<Response<Body>, GatewayError> {
        let mut req = Request::new(crate::body::empty());
        let _ = p.on_request(cx, &mut req).await?;
        let mut res = Response::new(crate::body::full("hello"));
        p.on_response(cx, &mut res).await?;
        Ok(res)
    }

    #[tokio::test]
    async fn the_slot_is_held_until_the_body_is_sent() {
        let p = policy("ip", 1);
        let mut a = cx();
        let res = enter(&p, &mut a).await.unwrap();
        // Headers are out, the body is not: the slot is still taken.
        let e = enter(&p, &mut cx()).await.unwrap_err();
        assert_eq!(e.status(), 429);
        let r = e.to_response("t");
        assert_eq!(r.headers()["retry-after"], "1");
        let bytes = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");
        assert!(
            enter(&p, &mut cx()).await.is_ok(),
            "free once the body ended"
        );
    }

    #[tokio::test]
    async fn a_dropped_body_frees_the_slot() {
        let p = policy("ip", 1);
        let res = enter(&p, &mut cx()).await.unwrap();
        drop(res);
        assert!(enter(&p, &mut cx()).await.is_ok());
    }

    #[tokio::test]
    async fn route_wide_limits_answer_503() {
        let p = policy("route", 1);
        let _held = enter(&p, &mut cx()).await.unwrap();
        let mut other = cx();
        other.client = "198.51.100.1:1".parse().unwrap();
        assert_eq!(enter(&p, &mut other).await.unwrap_err().status(), 503);
        // Keyed by client, another client still gets in.
        let p = policy("ip", 1);
        let _held = enter(&p, &mut cx()).await.unwrap();
        assert!(enter(&p, &mut other).await.is_ok());
    }

    #[test]
    fn max_must_be_positive() {
        let e = ConcurrencyLimit::build_alone(&ConcurrencyLimitConfig { key: None, max: 0 })
            .err()
            .unwrap();
        assert_eq!(super::super::split_field_error(&e).0, Some("max"));
    }
}
