//! The gateway started in-process from a YAML snippet, with a client for it.

use super::config::{write_config_with, Admin};
use super::observe::{Metrics, TOKEN};
use super::raw::{raw, Raw};
use super::upstream::{seen, Seen};
use portcullis::server::{self, ConfigSource, Options, ServerHandle, StartError};
use portcullis::upstream::state::{TargetHealth, UpstreamStatus};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A running gateway and a client for it. Its temp dir holds the config (and whatever the
/// test puts next to it, such as certificates).
pub struct Gateway {
    pub handle: ServerHandle,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub dir: tempfile::TempDir,
    /// The config file.
    pub path: PathBuf,
    /// Which admin listener the config got, for [`Gateway::rewrite`].
    admin_mode: Admin,
}

impl Gateway {
    /// Starts with [`full_config`](super::config::full_config)`(yaml)` (no admin listener).
    pub async fn start(yaml: impl AsRef<str>) -> Gateway {
        Gateway::start_as(Admin::None, yaml).await
    }

    /// Starts with the config written into `dir` (for files the config refers to).
    pub async fn start_in(dir: tempfile::TempDir, yaml: impl AsRef<str>) -> Gateway {
        Gateway::start_in_as(Admin::None, dir, yaml).await
    }

    pub async fn try_start_in(dir: tempfile::TempDir, yaml: &str) -> Result<Gateway, StartError> {
        Gateway::try_start_in_as(Admin::None, dir, yaml).await
    }

    /// Starts with this kind of admin listener added (unless the snippet has `admin:`).
    pub async fn start_as(admin: Admin, yaml: impl AsRef<str>) -> Gateway {
        Gateway::start_in_as(admin, tempfile::tempdir().unwrap(), yaml).await
    }

    pub async fn start_in_as(
        admin: Admin,
        dir: tempfile::TempDir,
        yaml: impl AsRef<str>,
    ) -> Gateway {
        match Gateway::try_start_in_as(admin, dir, yaml.as_ref()).await {
            Ok(gw) => gw,
            Err(e) => panic!("the gateway did not start:\n{e}"),
        }
    }

    pub async fn try_start_as(admin: Admin, yaml: &str) -> Result<Gateway, StartError> {
        Gateway::try_start_in_as(admin, tempfile::tempdir().unwrap(), yaml).await
    }

    pub async fn try_start_in_as(
        admin: Admin,
        dir: tempfile::TempDir,
        yaml: &str,
    ) -> Result<Gateway, StartError> {
        let path = write_config_with(admin, dir.path(), yaml);
        let handle = server::start(Options {
            source: ConfigSource::File(path.clone()),
            watch: false,
            sighup: false,
        })
        .await?;
        let addr = handle.addr();
        Ok(Gateway {
            handle,
            addr,
            client: super::client::client(),
            dir,
            path,
            admin_mode: admin,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// A GET to build on (headers, then `send`).
    pub fn get_req(&self, path: &str) -> reqwest::RequestBuilder {
        self.client.get(self.url(path))
    }

    /// GET through to an echo upstream: what it saw.
    pub async fn seen(&self, path: &str) -> Seen {
        seen(self.get(path).await).await
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// GET; the status and the body as JSON (`Null` when it is not JSON).
    pub async fn call(&self, path: &str) -> (u16, Value) {
        let r = self.get(path).await;
        let s = r.status().as_u16();
        let text = r.text().await.unwrap_or_default();
        (s, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// Which upstream answered a GET (the backend's `upstream`), insisting on 200.
    pub async fn who(&self, path: &str) -> String {
        let (s, v) = self.call(path).await;
        assert_eq!(s, 200, "{v}");
        v["upstream"].as_str().unwrap().to_owned()
    }

    /// GET `path` exactly as written, over a fresh TCP connection.
    pub async fn raw_get(&self, path: &str) -> Raw {
        self.raw(&format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        ))
        .await
    }

    /// Sends `request` byte for byte over a fresh TCP connection and reads one response.
    pub async fn raw(&self, request: &str) -> Raw {
        raw(self.addr, request.as_bytes()).await
    }

    // ------------------------------------------------------------ admin

    /// The admin listener's address (panics if the config has none).
    pub fn admin_addr(&self) -> SocketAddr {
        self.handle.admin_addr().expect("an admin listener")
    }

    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr())
    }

    /// An admin request with the right token.
    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.admin_url(path))
            .bearer_auth(TOKEN)
    }

    /// `GET` an admin endpoint with the token; insists on 200 and returns the JSON.
    pub async fn admin_json(&self, path: &str) -> Value {
        let r = self.admin(reqwest::Method::GET, path).send().await.unwrap();
        let status = r.status();
        let text = r.text().await.unwrap();
        assert_eq!(status, 200, "GET {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {text}"))
    }

    /// The metrics text.
    pub async fn metrics(&self) -> Metrics {
        let r = self
            .admin(reqwest::Method::GET, "/metrics")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
        Metrics::parse(&r.text().await.unwrap())
    }

    // ------------------------------------------------------------ config, state

    /// Replaces the config file, made up as at start (for `POST /reload`).
    pub fn rewrite(&self, yaml: &str) {
        write_config_with(self.admin_mode, self.dir.path(), yaml);
    }

    /// [`Gateway::rewrite`], then reloads.
    pub async fn reload_with(&self, yaml: &str) {
        self.rewrite(yaml);
        self.handle.reload().await.expect("reload");
    }

    pub fn upstream(&self, name: &str) -> UpstreamStatus {
        self.handle
            .upstream_states()
            .into_iter()
            .find(|u| u.name == name)
            .unwrap_or_else(|| panic!("no upstream {name}"))
    }

    /// The health of the target whose URL contains `addr`.
    pub fn target_health(&self, upstream: &str, addr: SocketAddr) -> TargetHealth {
        let u = self.upstream(upstream);
        u.targets
            .iter()
            .find(|t| t.url.contains(&addr.to_string()))
            .unwrap_or_else(|| panic!("{addr} is not a target of {upstream}: {u:?}"))
            .health
    }

    pub async fn stop(self) {
        self.handle.shutdown_within(Duration::from_secs(2)).await;
    }
}
