//! YAML snippets written inside tests, made into the config the gateway reads.

use super::observe::TOKEN;
use std::path::{Path, PathBuf};

/// Which admin listener [`full_config`] adds when the snippet has no `admin:` of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admin {
    /// No admin listener.
    None,
    /// An admin listener on a free loopback port with [`TOKEN`].
    Token,
    /// An admin listener on a free loopback port without a token.
    Open,
}

/// Removes the common indentation of a YAML snippet written inside a test.
pub fn dedent(text: &str) -> String {
    let indent = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    text.lines()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

/// The config as the gateway reads it: the snippet, plus a listener on a free port and the
/// access log off unless the snippet says otherwise.
pub fn full_config(yaml: &str) -> String {
    full_config_with(Admin::None, yaml)
}

/// [`full_config`], plus the `admin` listener unless the snippet has its own.
pub fn full_config_with(admin: Admin, yaml: &str) -> String {
    let yaml = dedent(yaml);
    let has = |key: &str| yaml.lines().any(|l| l.starts_with(key));
    let mut out = String::new();
    if !has("listeners:") {
        out.push_str("listeners: [{ bind: \"127.0.0.1:0\" }]\n");
    }
    if !has("admin:") {
        match admin {
            Admin::None => {}
            Admin::Token => out.push_str(&format!(
                "admin: {{ bind: \"127.0.0.1:0\", token: \"{TOKEN}\" }}\n"
            )),
            Admin::Open => out.push_str("admin: { bind: \"127.0.0.1:0\" }\n"),
        }
    }
    if !has("access_log:") {
        out.push_str("access_log: { format: off }\n");
    }
    out + &yaml
}

/// Writes [`full_config_with`] to `dir/portcullis.yaml`.
pub fn write_config_with(admin: Admin, dir: &Path, yaml: &str) -> PathBuf {
    let path = dir.join("portcullis.yaml");
    std::fs::write(&path, full_config_with(admin, yaml)).unwrap();
    path
}

pub fn write_config(dir: &Path, yaml: &str) -> PathBuf {
    write_config_with(Admin::None, dir, yaml)
}

/// Loads and compiles a snippet (made into [`full_config`]) the way the gateway does.
fn load_and_compile(
    yaml: &str,
) -> Result<portcullis::compile::Gateway, portcullis::config::Diagnostics> {
    let pools = portcullis::upstream::Pools::default();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.yaml");
    std::fs::write(&path, full_config(yaml)).unwrap();
    portcullis::compile::load_and_compile(&path, &pools)
}

/// Config errors of a YAML snippet, one `path: message` per line (and the located form).
pub fn config_errors(yaml: &str) -> Vec<portcullis::config::Diagnostic> {
    match load_and_compile(yaml) {
        Ok(_) => Vec::new(),
        Err(d) => d.0,
    }
}

/// The compiled gateway of a YAML snippet (panics with the diagnostics if it does not compile).
pub fn compile(yaml: &str) -> portcullis::compile::Gateway {
    load_and_compile(yaml).unwrap_or_else(|d| panic!("{d}"))
}
