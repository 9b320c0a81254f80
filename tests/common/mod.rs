//! Shared helpers for the black-box tests. Every test binary declares `mod common;` and uses
//! a different subset:
//!
//! - [`upstream`]: test upstreams on 127.0.0.1 (echo, slow, mirror, recording, TLS), what an
//!   echo upstream saw, closed ports;
//! - [`config`]: YAML snippets as the gateway reads them;
//! - [`gateway`]: the gateway started in-process from YAML (optionally with its admin
//!   listener), with a client;
//! - [`client`]: reqwest and rustls client configs;
//! - [`raw`]: raw HTTP/1.1 over TCP;
//! - [`problem`]: checks of the gateway's problem+json answers;
//! - [`identity`]: signing keys, tokens, JWKS and introspection servers, a small PKI;
//! - [`observe`]: admin token, Prometheus text, an OTLP collector;
//! - [`backends`]: controllable backends (slow, failing, killed), a TLS backend, a fake DNS;
//! - [`traffic`]: Redis, gateways as child processes with a port of their own, windows;
//! - [`process`]: the `portcullis` binary as a child process, config files on disk.
#![allow(dead_code)]

pub mod backends;
pub mod client;
pub mod config;
pub mod gateway;
pub mod identity;
pub mod observe;
pub mod problem;
pub mod process;
pub mod raw;
pub mod traffic;
pub mod upstream;

#[allow(unused_imports)]
pub use client::*;
#[allow(unused_imports)]
pub use config::*;
#[allow(unused_imports)]
pub use gateway::*;
#[allow(unused_imports)]
pub use problem::*;
#[allow(unused_imports)]
pub use raw::*;
#[allow(unused_imports)]
pub use upstream::*;

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
