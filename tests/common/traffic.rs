//! Helpers for the traffic-control tests: Redis (the shared one from `REDIS_URL`, or a private
//! `redis-server` a test starts, kills and restarts), gateways as child processes, window
//! alignment and tallies of answers.

use super::free_port;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The Redis the tests share: `REDIS_URL`, default `redis://127.0.0.1:6379`. Panics with how
/// to start one when it does not answer: a Redis test that silently skipped would prove
/// nothing.
pub fn redis_url() -> String {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let client = redis::Client::open(url.as_str()).expect("REDIS_URL is a Redis URL");
    let ok = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .and_then(|mut c| redis::cmd("PING").query::<String>(&mut c));
    if let Err(e) = ok {
        panic!(
            "no Redis at {url} ({e}); start one with `redis-server --daemonize yes --port 6379 --save '' --appendonly no` or set REDIS_URL"
        );
    }
    url
}

/// A key prefix no other test (or earlier run) uses.
pub fn unique_prefix(test: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!(
        "pctest:{test}:{}:{nanos}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Keys under `prefix`, with their remaining TTL in ms.
pub fn keys_with_ttl(url: &str, prefix: &str) -> BTreeMap<String, i64> {
    let client = redis::Client::open(url).unwrap();
    let mut c = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut c)
        .unwrap();
    keys.into_iter()
        .map(|k| {
            let ttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut c).unwrap();
            (k, ttl)
        })
        .collect()
}

/// Calls of one Redis command so far (`INFO commandstats`).
pub fn command_calls(url: &str, command: &str) -> u64 {
    let client = redis::Client::open(url).unwrap();
    let mut c = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
    let tag = format!("cmdstat_{command}:calls=");
    info.lines()
        .find_map(|l| l.strip_prefix(&tag))
        .and_then(|r| r.split(',').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// Waits until `addr` accepts connections (`open`) or refuses them; whether it did in time.
pub fn wait_port(addr: SocketAddr, open: bool, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let up = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok();
        if up == open {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// A private `redis-server` on a free port, stopped when dropped. Kill and start it again
/// (same port) to make an outage.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let mut s = RedisServer {
            port: free_port(),
            child: None,
        };
        s.restart();
        s
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Starts the server (again) on its port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no", "--logfile", ""])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        assert!(
            wait_port(self.addr(), true, Duration::from_secs(10)),
            "redis-server did not start on port {}",
            self.port
        );
    }

    /// Kills the server (SIGKILL: an outage, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(wait_port(self.addr(), false, Duration::from_secs(5)));
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `portcullis run` as a child process, on a port chosen by the test. Killed when dropped.
pub struct ChildGateway {
    pub addr: SocketAddr,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl ChildGateway {
    /// `yaml` must contain `@PORT@` where the listener's port goes.
    pub fn spawn(dir: &Path, name: &str, yaml: &str) -> ChildGateway {
        let port = free_port();
        let path = dir.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml.replace("@PORT@", &port.to_string())).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "-c"])
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), log.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let gw = ChildGateway { addr, child, log };
        assert!(
            wait_port(addr, true, Duration::from_secs(20)),
            "gateway {name} did not listen; log:\n{}",
            gw.log()
        );
        gw
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for ChildGateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sleeps until `margin` after the next multiple of `period` since the Unix epoch, unless at
/// least `need` of the current window is left: window-based tests then never straddle a
/// boundary by accident.
pub async fn align_to_window(period: Duration, need: Duration) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    let p = period.as_nanos();
    let into = now.as_nanos() % p;
    let left = Duration::from_nanos((p - into) as u64);
    if left < need {
        tokio::time::sleep(left + Duration::from_millis(20)).await;
    }
}

/// Counts of answers by status.
#[derive(Debug, Default, Clone)]
pub struct Tally(pub BTreeMap<u16, usize>);

impl Tally {
    pub fn add(&mut self, status: u16) {
        *self.0.entry(status).or_default() += 1;
    }
    pub fn get(&self, status: u16) -> usize {
        self.0.get(&status).copied().unwrap_or(0)
    }
    pub fn total(&self) -> usize {
        self.0.values().sum()
    }
}

/// A header as a string ("" when absent).
pub fn header(res: &reqwest::Response, name: &str) -> String {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// `redis-cli monitor` on a port: every command Redis runs, with where it came from.
pub struct Monitor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Monitor {
    pub fn start(port: u16) -> Monitor {
        let mut child = Command::new("redis-cli")
            .args(["-p", &port.to_string(), "monitor"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-cli must be installed");
        let lines: Arc<Mutex<Vec<String>>> = Default::default();
        let (out, sink) = (child.stdout.take().unwrap(), lines.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lines.lock().unwrap().iter().any(|l| l == "OK") {
            assert!(Instant::now() < deadline, "redis-cli monitor did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
        Monitor { child, lines }
    }

    /// Commands that arrived over the network (not those a Lua script ran), by name.
    pub fn network_commands(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(" [0 127.0.0.1:"))
            .filter_map(|l| l.split(']').nth(1))
            .filter_map(|rest| rest.split('"').nth(1))
            .map(|c| c.to_ascii_uppercase())
            .collect()
    }

    /// Commands a Lua script ran, by name.
    pub fn script_commands(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(" [0 lua]"))
            .filter_map(|l| l.split(']').nth(1))
            .filter_map(|rest| rest.split('"').nth(1))
            .map(|c| c.to_ascii_uppercase())
            .collect()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
