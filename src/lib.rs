//! Portcullis, an API gateway.
//!
//! The YAML config ([`config`]) is compiled ([`compile`]) into an immutable
//! [`compile::Gateway`]: listeners, a router ([`router`]), and per route a policy chain
//! ([`policy`]) and a backend ([`backend`]) over upstream pools ([`upstream`]). The server
//! ([`server`]) serves requests through one pipeline ([`proxy`]) against the current snapshot
//! and swaps in a new one on reload. Everything the gateway says itself is an RFC 9457
//! problem ([`error`]). Identity (consumers, credentials, providers) lives in [`auth`].

#![forbid(unsafe_code)]

pub mod admin;
pub mod auth;
pub mod backend;
pub mod body;
pub mod clock;
pub mod compile;
pub mod config;
pub mod demo;
pub mod error;
pub mod forwarded;
pub mod normalize;
pub mod observe;
pub mod policy;
pub mod proxy;
pub mod raw_head;
pub mod router;
pub mod server;
pub mod state;
pub mod upstream;
