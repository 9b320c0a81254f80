//! The running server: listeners, connections (TLS, HTTP/1.1, h2c, h2), hot reload and
//! graceful shutdown.
//!
//! - One accept loop per listener. Proxy connections speaking HTTP/1.1 (plain, or TLS with
//!   ALPN http/1.1) are served by the gateway's own connection loop ([`h1`]), which parses
//!   and checks each head once; HTTP/2 (ALPN h2 or the h2c preface), upgrades and `CONNECT`,
//!   and the admin listener are served by hyper's auto builder.
//! - The current config snapshot sits in an `ArcSwap`; every request loads it once.
//! - Reload (file change, SIGHUP, or [`ServerHandle::reload`]) reads and compiles the file on a
//!   blocking thread, binds any new listener addresses, then swaps. A bad file or a bind
//!   failure leaves the old snapshot serving; listeners whose `bind` is unchanged keep their
//!   socket; removed ones stop accepting and their connections drain.
//! - Shutdown stops every accept loop and waits up to `server.shutdown_grace` for in-flight
//!   requests.
//! - Long-lived across reloads, next to the pools: the metrics registry (per-route handles are
//!   resolved into each new snapshot at install), the access-log sinks (reopened on SIGUSR1)
//!   and the tracer (restarted only when `tracing` changes).

pub mod h1;
pub mod tls;

use crate::compile::{self, CompileEnv, Gateway};
use crate::config::Diagnostics;
use crate::observe::access_log::Sink;
use crate::observe::metrics::{ListenerMetrics, Metrics};
use crate::observe::trace::Tracer;
use crate::proxy::{self, ConnInfo, Snapshot};
use crate::upstream::Pools;
use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Where the config comes from.
#[derive(Clone)]
pub enum ConfigSource {
    /// A file: watched for changes and re-read on reload.
    File(PathBuf),
    /// Text held in memory (the bundled demo), with extra `${VAR}` values.
    Inline {
        name: String,
        text: String,
        vars: HashMap<String, String>,
    },
}

impl ConfigSource {
    fn load(&self, pools: &Pools) -> Result<Gateway, Diagnostics> {
        match self {
            ConfigSource::File(p) => compile::load_and_compile(p, pools),
            ConfigSource::Inline { name, text, vars } => {
                let env = |k: &str| vars.get(k).cloned().or_else(|| std::env::var(k).ok());
                compile::load_and_compile_str(
                    name,
                    text,
                    &env,
                    &CompileEnv {
                        base_dir: PathBuf::from("."),
                        pools,
                    },
                )
            }
        }
    }
}

/// Options for [`start`].
#[derive(Clone)]
pub struct Options {
    pub source: ConfigSource,
    /// Reload when the file changes. Default true.
    pub watch: bool,
    /// Reload on SIGHUP; shut down is left to the caller. Default true.
    pub sighup: bool,
}

impl Options {
    pub fn file(path: impl Into<PathBuf>) -> Options {
        Options {
            source: ConfigSource::File(path.into()),
            watch: true,
            sighup: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] Diagnostics),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot open the access log: {0}")]
    AccessLog(std::io::Error),
}

/// A listener that is accepting.
struct Running {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Proxy,
    Admin,
}

struct State {
    current: ArcSwap<Snapshot>,
    source: ConfigSource,
    pools: Arc<Pools>,
    /// Rate-limit counters and the Redis connection, kept across reloads.
    stores: crate::state::Stores,
    generation: AtomicU64,
    /// The generation of the snapshot in `current`, set after it is stored: a connection
    /// keeps the snapshot it last loaded while this has not moved (see `serve_h1`).
    published: AtomicU64,
    running: Mutex<HashMap<(Kind, String), Running>>,
    sinks: Mutex<HashMap<Option<String>, Sink>>,
    /// Fires on shutdown; every connection holds a receiver until it ends.
    graceful: Mutex<Option<watch::Sender<()>>>,
    reload_lock: tokio::sync::Mutex<()>,
    reloads_ok: AtomicU64,
    reloads_failed: AtomicU64,
    metrics: Arc<Metrics>,
    tracer: Mutex<Option<Tracer>>,
    started_at: std::time::SystemTime,
}

/// A handle on a started server.
#[derive(Clone)]
pub struct ServerHandle {
    state: Arc<State>,
}

/// Compiles the config, binds every listener and starts serving on the current tokio runtime.
pub async fn start(opts: Options) -> Result<ServerHandle, StartError> {
    let pools = Arc::new(Pools::default());
    let source = opts.source.clone();
    let gw = {
        let (source, pools) = (source.clone(), pools.clone());
        tokio::task::spawn_blocking(move || source.load(&pools))
            .await
            .expect("compile does not panic")?
    };
    let metrics = Arc::new(Metrics::new());
    let placeholder = empty_gateway(&gw);
    let state = Arc::new(State {
        current: ArcSwap::from_pointee(Snapshot {
            metrics: metrics.install(&placeholder, 0),
            gateway: placeholder,
            log: None,
            generation: 0,
            tracer: None,
        }),
        source,
        pools,
        stores: crate::state::Stores::new(),
        generation: AtomicU64::new(0),
        published: AtomicU64::new(0),
        running: Mutex::new(HashMap::new()),
        sinks: Mutex::new(HashMap::new()),
        graceful: Mutex::new(Some(watch::channel(()).0)),
        reload_lock: tokio::sync::Mutex::new(()),
        reloads_ok: AtomicU64::new(0),
        reloads_failed: AtomicU64::new(0),
        metrics,
        tracer: Mutex::new(None),
        started_at: std::time::SystemTime::now(),
    });
    let handle = ServerHandle { state };
    spawn_sigusr1();
    handle.install(gw).await?;
    if opts.watch {
        if let ConfigSource::File(p) = &opts.source {
            spawn_watcher(handle.clone(), p.clone());
        }
    }
    if opts.sighup {
        spawn_sighup(handle.clone());
    }
    Ok(handle)
}

/// A placeholder snapshot for the instant before the first install (never served).
fn empty_gateway(gw: &Gateway) -> Gateway {
    Gateway {
        listeners: Vec::new(),
        admin: None,
        router: Default::default(),
        routes: Vec::new(),
        upstreams: Default::default(),
        settings: compile::Settings {
            request_id_header: gw.settings.request_id_header.clone(),
            trust_incoming_id: false,
            trusted_proxies: Vec::new(),
            max_header_size: gw.settings.max_header_size,
            shutdown_grace: gw.settings.shutdown_grace,
            via: None,
            access_log: Default::default(),
            tracing: None,
        },
        workers: None,
        source: gw.source.clone(),
        auth: gw.auth.clone(),
        state: Default::default(),
    }
}

impl ServerHandle {
    /// Addresses the proxy listeners are bound to, by listener name, in config order.
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
        let snap = self.state.current.load();
        let running = self.state.running.lock().unwrap_or_else(|e| e.into_inner());
        snap.gateway
            .listeners
            .iter()
            .filter_map(|l| {
                running
                    .get(&(Kind::Proxy, l.bind_key.clone()))
                    .map(|r| (l.name.clone(), r.addr))
            })
            .collect()
    }

    /// The first proxy listener's address (tests, demo).
    pub fn addr(&self) -> SocketAddr {
        self.addrs()
            .first()
            .map(|(_, a)| *a)
            .expect("at least one listener")
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        let snap = self.state.current.load();
        let admin = snap.gateway.admin.as_ref()?;
        let running = self.state.running.lock().unwrap_or_else(|e| e.into_inner());
        running
            .get(&(Kind::Admin, admin.bind_key.clone()))
            .map(|r| r.addr)
    }

    /// The snapshot generation: 1 after start, +1 per successful reload.
    pub fn generation(&self) -> u64 {
        self.state.current.load().generation
    }

    /// (successful, failed) reloads so far.
    pub fn reload_counts(&self) -> (u64, u64) {
        (
            self.state.reloads_ok.load(Ordering::Relaxed),
            self.state.reloads_failed.load(Ordering::Relaxed),
        )
    }

    /// Re-reads and compiles the config; on any error the running config stays.
    pub async fn reload(&self) -> Result<u64, StartError> {
        let _guard = self.state.reload_lock.lock().await;
        let source = self.state.source.clone();
        let state = self.state.clone();
        let compiled = tokio::task::spawn_blocking(move || source.load(&state.pools))
            .await
            .expect("compile does not panic");
        let result = match compiled {
            Ok(gw) => self.install(gw).await,
            Err(d) => Err(StartError::Config(d)),
        };
        self.state.metrics.reloaded(result.is_ok());
        match &result {
            Ok(()) => {
                self.state.reloads_ok.fetch_add(1, Ordering::Relaxed);
                tracing::info!(generation = self.generation(), "config reloaded");
            }
            Err(e) => {
                self.state.reloads_failed.fetch_add(1, Ordering::Relaxed);
                tracing::error!("config reload rejected, the previous config keeps serving:\n{e}");
            }
        }
        result.map(|()| self.generation())
    }

    /// Binds new listeners, swaps the snapshot, stops removed listeners.
    async fn install(&self, gw: Gateway) -> Result<(), StartError> {
        let st = &self.state;
        // Bind what is new, before touching anything that serves.
        let mut wanted: Vec<((Kind, String), SocketAddr)> = gw
            .listeners
            .iter()
            .map(|l| ((Kind::Proxy, l.bind_key.clone()), l.addr))
            .collect();
        if let Some(a) = &gw.admin {
            wanted.push(((Kind::Admin, a.bind_key.clone()), a.addr));
        }
        let mut fresh = Vec::new();
        {
            let running = st.running.lock().unwrap_or_else(|e| e.into_inner());
            for (key, addr) in &wanted {
                if running.contains_key(key) {
                    continue;
                }
                match bind(*addr) {
                    Ok(l) => fresh.push((key.clone(), l)),
                    Err(source) => {
                        return Err(StartError::Bind {
                            addr: key.1.clone(),
                            source,
                        })
                    }
                }
            }
        }
        let log = match gw.settings.access_log.format {
            crate::config::AccessLogFormat::Off => None,
            _ => {
                let path = gw.settings.access_log.path.clone();
                let mut sinks = st.sinks.lock().unwrap_or_else(|e| e.into_inner());
                match sinks.get(&path) {
                    Some(s) => Some(s.clone()),
                    None => {
                        let s = Sink::open(path.as_deref()).map_err(StartError::AccessLog)?;
                        sinks.insert(path, s.clone());
                        Some(s)
                    }
                }
            }
        };
        // Discovered upstreams that were never resolved get their targets before serving.
        st.pools.prepare(&gw.upstreams).await;
        gw.state.bind(&st.stores);
        let old_workers = st.current.load().gateway.workers;
        let generation = st.generation.fetch_add(1, Ordering::Relaxed) + 1;
        if generation > 1 && old_workers != gw.workers {
            tracing::warn!("`workers` changed; it takes effect at the next restart");
        }
        // The exporter task is kept while the tracing settings stay the same.
        let tracer = {
            let mut t = st.tracer.lock().unwrap_or_else(|e| e.into_inner());
            match &gw.settings.tracing {
                None => *t = None,
                Some(ts) if t.as_ref().is_some_and(|x| x.settings() == ts) => {}
                Some(ts) => *t = Some(Tracer::start(ts.clone())),
            }
            t.clone()
        };
        st.current.store(Arc::new(Snapshot {
            metrics: st.metrics.install(&gw, generation),
            gateway: gw,
            log,
            generation,
            tracer,
        }));
        st.published.store(generation, Ordering::Release);
        // Health checks and discovery follow the new config; removed upstreams' tasks stop.
        st.pools.activate(&st.current.load().gateway.upstreams);
        // Start the new accept loops, stop the removed ones.
        let mut running = st.running.lock().unwrap_or_else(|e| e.into_inner());
        for ((kind, key), listener) in fresh {
            let addr = listener.local_addr().map_err(|source| StartError::Bind {
                addr: key.clone(),
                source,
            })?;
            let (stop, rx) = watch::channel(false);
            tracing::info!(listener = %key, %addr, admin = kind == Kind::Admin, "listening");
            tokio::spawn(accept_loop(self.clone(), kind, key.clone(), listener, rx));
            running.insert((kind, key), Running { addr, stop });
        }
        running.retain(|k, r| {
            let keep = wanted.iter().any(|(w, _)| w == k);
            if !keep {
                tracing::info!(listener = %k.1, "listener removed; its connections drain");
                let _ = r.stop.send(true);
            }
            keep
        });
        Ok(())
    }

    /// Stops accepting, lets in-flight requests finish for up to the configured grace
    /// period. Returns true when everything drained in time.
    pub async fn shutdown(&self) -> bool {
        let grace = self.state.current.load().gateway.settings.shutdown_grace;
        self.shutdown_within(grace).await
    }

    pub async fn shutdown_within(&self, grace: Duration) -> bool {
        self.state.pools.stop();
        {
            let mut running = self.state.running.lock().unwrap_or_else(|e| e.into_inner());
            for (_, r) in running.drain() {
                let _ = r.stop.send(true);
            }
        }
        let graceful = self
            .state
            .graceful
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        match graceful {
            Some(tx) => {
                let _ = tx.send(());
                tokio::time::timeout(grace, tx.closed()).await.is_ok()
            }
            None => true,
        }
    }

    /// The current route table (for the admin listener and `portcullis routes`).
    pub fn route_table(&self) -> String {
        self.state.current.load().gateway.route_table()
    }

    /// Every upstream's live state: targets with health, in-flight and last error, the
    /// breaker, bulkhead, retry budget and discovery (admin `GET /upstreams`, metrics).
    pub fn upstream_states(&self) -> Vec<crate::upstream::state::UpstreamStatus> {
        self.snapshot()
            .gateway
            .upstreams
            .values()
            .map(|u| u.status())
            .collect()
    }

    /// A receiver of the shutdown signal for a new connection; `None` once shutting down.
    fn stop_signal(&self) -> Option<watch::Receiver<()>> {
        let g = self
            .state
            .graceful
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(watch::Sender::subscribe)
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.state.current.load_full()
    }

    /// The snapshot to serve a request with, given the one this connection served its last
    /// request with: the same one (one reference count up) while no new one has been
    /// published since, else the current one. Loading from the `ArcSwap` costs three
    /// atomic read-modify-writes a request against one; a request that begins after a
    /// reload's swap still gets the new snapshot, since the swap is published (release)
    /// before the reload returns and read here (acquire) per request.
    fn snapshot_after(&self, last: &mut Option<(u64, Arc<Snapshot>)>) -> Arc<Snapshot> {
        let published = self.state.published.load(Ordering::Acquire);
        match last {
            Some((g, snap)) if *g == published => snap.clone(),
            _ => {
                let snap = self.snapshot();
                *last = Some((published, snap.clone()));
                snap
            }
        }
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(false).ok();
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(4096)?;
    Ok(sock.into())
}

async fn accept_loop(
    handle: ServerHandle,
    kind: Kind,
    key: String,
    listener: std::net::TcpListener,
    mut stop: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(listener = %key, error = %e, "cannot register listener");
            return;
        }
    };
    let conns: ListenerMetrics = handle.state.metrics.listener(match kind {
        Kind::Proxy => &key,
        Kind::Admin => "admin",
    });
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let h = handle.clone();
                    let key = key.clone();
                    let open = conns.connection();
                    tokio::spawn(async move {
                        serve_connection(h, kind, key, stream, peer).await;
                        drop(open);
                    });
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(listener = %key, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}

const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve_connection(
    handle: ServerHandle,
    kind: Kind,
    key: String,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
) {
    let snap = handle.snapshot();
    let tls = match kind {
        Kind::Proxy => snap
            .gateway
            .listeners
            .iter()
            .find(|l| l.bind_key == key)
            .and_then(|l| l.tls.clone()),
        Kind::Admin => None,
    };
    let max_header = snap.gateway.settings.max_header_size;
    drop(snap);
    let conn = |tls: bool, client_cert| ConnInfo {
        peer,
        peer_value: crate::forwarded::peer_value(peer.ip()),
        tls,
        client_cert,
        raw_head: false,
    };
    match (tls, kind) {
        (None, Kind::Admin) => {
            if let Some(stop) = handle.stop_signal() {
                let io = h1::Rewind::new(stream);
                serve_hyper(handle, kind, io, conn(false, None), max_header, stop).await
            }
        }
        (None, Kind::Proxy) => serve_h1(handle, stream, conn(false, None), max_header).await,
        (Some(cfg), _) => {
            let acceptor = tokio_rustls::TlsAcceptor::from(cfg);
            match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(s)) => {
                    // mTLS: rustls verified the chain; read the leaf once per connection.
                    let client_cert = s
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| crate::auth::mtls::ClientCert::parse(c.as_ref()))
                        .map(Arc::new);
                    let info = conn(true, client_cert);
                    if s.get_ref().1.alpn_protocol() == Some(b"h2") {
                        if let Some(stop) = handle.stop_signal() {
                            let io = h1::Rewind::new(s);
                            serve_hyper(handle, kind, io, info, max_header, stop).await
                        }
                    } else {
                        serve_h1(handle, s, info, max_header).await
                    }
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

/// How long a client may take to send a complete request head (idle time before it
/// included); hyper's setting for the connections it serves.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// A proxy connection on the gateway's own HTTP/1 server ([`h1`]); what it hands off
/// (h2c, upgrades) goes on to hyper.
async fn serve_h1<S>(handle: ServerHandle, io: S, conn: ConnInfo, max_header: u64)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(stop) = handle.stop_signal() else {
        // Shutting down: refuse new work on a connection accepted in the race.
        return;
    };
    let cfg = h1::Config {
        max_head: usize::try_from(max_header).unwrap_or(usize::MAX),
        header_timeout: HEADER_TIMEOUT,
    };
    let h = handle.clone();
    // Only this server's responses may carry raw fields; what is handed to hyper may not.
    let c = ConnInfo {
        raw_head: true,
        ..conn.clone()
    };
    let mut last = None;
    let ended = h1::serve(io, cfg, stop, move |call| {
        let snap = h.snapshot_after(&mut last);
        // The pipeline's future is returned as it is (no wrapping `async` block, which
        // would be one more copy of its state per request).
        let (req, refused) = match call {
            h1::Call::Request(req) => (req, None),
            h1::Call::Refused(reason, line) => {
                let e = reason.error(snap.gateway.settings.max_header_size);
                // A stand-in for the head that was refused: never routed or forwarded.
                (
                    http::Request::new(h1::RequestBody::empty()),
                    Some((e, Some(line))),
                )
            }
        };
        proxy::serve(snap, c.clone(), req, refused)
    })
    .await;
    if let h1::Ended::Handoff(io, stop) = ended {
        serve_hyper(handle, Kind::Proxy, io, conn, max_header, stop).await;
    }
}

/// A connection served by hyper: HTTP/2 (ALPN h2 or the h2c preface), what follows an
/// HTTP/1 upgrade or `CONNECT`, and the admin listener.
async fn serve_hyper<S>(
    handle: ServerHandle,
    kind: Kind,
    io: h1::Rewind<S>,
    conn: ConnInfo,
    max_header: u64,
    mut stop: watch::Receiver<()>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let h = handle.clone();
    let peer = conn.peer;
    let svc = service_fn(move |req| {
        let snap = h.snapshot();
        let h = h.clone();
        let conn = conn.clone();
        async move {
            Ok::<_, Infallible>(match kind {
                Kind::Proxy => proxy::handle(snap, conn, req).await,
                Kind::Admin => crate::admin::handle(&h, &snap, req).await,
            })
        }
    });
    let io = TokioIo::new(io);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own limit is a backstop above ours (HTTP/1 heads here were checked already).
    let backstop = (max_header as usize).saturating_mul(2).max(16 * 1024);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(backstop + 8192);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(backstop as u32)
        .max_concurrent_streams(1024);
    let mut conn = std::pin::pin!(builder.serve_connection_with_upgrades(io, svc));
    let mut stopping = false;
    let result = loop {
        tokio::select! {
            r = conn.as_mut() => break r,
            _ = stop.changed(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

fn spawn_watcher(handle: ServerHandle, path: PathBuf) {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let file_name = path.file_name().map(|f| f.to_owned());
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            let ours = ev
                .paths
                .iter()
                .any(|p| p.file_name() == file_name.as_deref());
            let relevant = matches!(
                ev.kind,
                notify::EventKind::Create(_)
                    | notify::EventKind::Modify(_)
                    | notify::EventKind::Remove(_)
            );
            if ours && relevant {
                let _ = tx.send(());
            }
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the config file; reload with SIGHUP");
            return;
        }
    };
    // Editors save by writing a new file and renaming it, so watch the directory.
    if let Err(e) = watcher.watch(&dir, RecursiveMode::NonRecursive) {
        tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the config directory; reload with SIGHUP");
        return;
    }
    // What was just compiled, read before any event can arrive.
    let mut last = std::fs::read(&path).ok();
    tokio::spawn(async move {
        let _keep = watcher;
        while rx.recv().await.is_some() {
            // Let a burst of events (truncate, write, rename) settle into one reload.
            tokio::time::sleep(Duration::from_millis(150)).await;
            while rx.try_recv().is_ok() {}
            let now = std::fs::read(&path).ok();
            if now.is_none() || now == last {
                continue;
            }
            last = now;
            let _ = handle.reload().await;
        }
    });
}

/// SIGUSR1 reopens access-log files (log rotation). Registered before `start` returns, so
/// the signal never falls through to its default action (exit). Every server registers its
/// own listener on its own runtime (tests run several runtimes in one process); the
/// reopening itself is process-wide and idempotent.
fn spawn_sigusr1() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::user_defined1()) {
            Ok(mut usr1) => {
                tokio::spawn(async move {
                    while usr1.recv().await.is_some() {
                        tracing::info!("SIGUSR1: reopening access-log files");
                        crate::observe::access_log::reopen_all();
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGUSR1; access-log files will not be reopened")
            }
        }
    }
}

fn spawn_sighup(handle: ServerHandle) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered before returning, so that a SIGHUP right after start reloads instead
        // of killing the process.
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; reload by saving the file");
            return;
        };
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP: reloading the config");
                let _ = handle.reload().await;
            }
        });
    }
}

impl ServerHandle {
    /// Time since [`start`].
    pub fn uptime(&self) -> Duration {
        self.state.started_at.elapsed().unwrap_or_default()
    }

    /// The server's metrics registry (long-lived; survives reloads).
    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// The running snapshot.
    pub fn current(&self) -> Arc<Snapshot> {
        self.snapshot()
    }

    /// Compiles a candidate config without touching the running one: nothing is bound, and
    /// connection pools are throwaway ones. Relative paths resolve against the running
    /// config's directory.
    pub fn validate(&self, name: &str, text: &str) -> Result<Gateway, Diagnostics> {
        let pools = Pools::default();
        let (base_dir, vars) = match &self.state.source {
            ConfigSource::File(p) => (
                p.parent().map(PathBuf::from).unwrap_or_default(),
                HashMap::new(),
            ),
            ConfigSource::Inline { vars, .. } => (PathBuf::from("."), vars.clone()),
        };
        let env = |k: &str| vars.get(k).cloned().or_else(|| std::env::var(k).ok());
        compile::load_and_compile_str(
            name,
            text,
            &env,
            &CompileEnv {
                base_dir,
                pools: &pools,
            },
        )
    }
}
