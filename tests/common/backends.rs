//! Helpers for the upstream black-box tests: test backends that can be made slow, failing,
//! killed and restarted on the same port; a TLS backend; a fake SRV name server; polling.
//!
//! Every server listens on 127.0.0.1 port 0 and stops when dropped.
use super::upstream::{full, BoxError, UpBody};
use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
#[allow(unused_imports)]
pub use portcullis::upstream::state::TargetHealth;
use serde_json::json;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

// ---------------------------------------------------------------- backends

/// What a [`Backend`] does; change it at any time.
pub struct Behaviour {
    pub hits: AtomicUsize,
    /// Hits on the health path.
    pub probes: AtomicUsize,
    /// Status of ordinary requests.
    pub status: AtomicU16,
    /// Status of `GET /healthz`.
    pub health: AtomicU16,
    /// Delay before answering ordinary requests, in ms.
    pub delay_ms: AtomicU64,
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

impl Behaviour {
    /// 200 to everything, no delay.
    fn new() -> Arc<Behaviour> {
        Arc::new(Behaviour {
            hits: AtomicUsize::new(0),
            probes: AtomicUsize::new(0),
            status: AtomicU16::new(200),
            health: AtomicU16::new(200),
            delay_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        })
    }
}

/// A test backend: answers JSON `{"upstream": name, "method", "path", "host", "body_len",
/// "version"}`, `GET /healthz` with its own status, `?sleep=MS` delays one request, and
/// `/partial` sends headers and one chunk and then breaks the connection.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    pub b: Arc<Behaviour>,
    stop: Mutex<Option<(watch::Sender<bool>, JoinHandle<()>)>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some((tx, task)) = self.stop.lock().unwrap().take() {
            let _ = tx.send(true);
            task.abort();
        }
    }
}

impl Backend {
    pub async fn start(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let b = Behaviour::new();
        let backend = Backend {
            name: name.to_owned(),
            addr,
            b,
            stop: Mutex::new(None),
        };
        backend.serve(listener);
        backend
    }

    fn serve(&self, listener: TcpListener) {
        let (tx, rx) = watch::channel(false);
        let (name, b) = (Arc::<str>::from(self.name.as_str()), self.b.clone());
        let task = tokio::spawn(async move {
            let mut stop = rx.clone();
            loop {
                tokio::select! {
                    _ = stop.wait_for(|s| *s) => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let (name, b, mut stop) = (name.clone(), b.clone(), rx.clone());
                        tokio::spawn(async move {
                            let svc = hyper::service::service_fn(move |req| {
                                let (name, b) = (name.clone(), b.clone());
                                async move { Ok::<_, Infallible>(answer(name, b, req).await) }
                            });
                            let builder = auto::Builder::new(TokioExecutor::new());
                            let conn = builder.serve_connection(TokioIo::new(stream), svc);
                            // Killing the backend drops its connections mid-request.
                            tokio::select! {
                                _ = conn => {}
                                _ = stop.wait_for(|s| *s) => {}
                            }
                        });
                    }
                }
            }
        });
        *self.stop.lock().unwrap() = Some((tx, task));
    }

    /// Stops listening and drops every connection at once (requests in flight break).
    pub async fn kill(&self) {
        let stopped = self.stop.lock().unwrap().take();
        if let Some((tx, task)) = stopped {
            let _ = tx.send(true);
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        let listener = loop {
            match TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn hits(&self) -> usize {
        self.b.hits.load(Ordering::SeqCst)
    }

    pub fn set_status(&self, s: u16) {
        self.b.status.store(s, Ordering::SeqCst);
    }

    pub fn set_health(&self, s: u16) {
        self.b.health.store(s, Ordering::SeqCst);
    }

    pub fn set_delay(&self, d: Duration) {
        self.b
            .delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }
}

struct InFlight(Arc<Behaviour>);

impl InFlight {
    fn new(b: Arc<Behaviour>) -> InFlight {
        let n = b.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        b.max_in_flight.fetch_max(n, Ordering::SeqCst);
        InFlight(b)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn answer(name: Arc<str>, b: Arc<Behaviour>, req: Request<Incoming>) -> Response<UpBody> {
    if req.uri().path() == "/healthz" {
        b.probes.fetch_add(1, Ordering::SeqCst);
        let mut r = Response::new(full("health"));
        *r.status_mut() = http::StatusCode::from_u16(b.health.load(Ordering::SeqCst)).unwrap();
        return r;
    }
    b.hits.fetch_add(1, Ordering::SeqCst);
    let _in_flight = InFlight::new(b.clone());
    let sleep = req
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("sleep=")))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| b.delay_ms.load(Ordering::SeqCst));
    if sleep > 0 {
        tokio::time::sleep(Duration::from_millis(sleep)).await;
    }
    if req.uri().path() == "/partial" {
        // Headers and a first chunk go out; 100ms later the body fails and the connection
        // is cut.
        let chunks = futures_util::stream::unfold(0u8, |step| async move {
            match step {
                0 => Some((
                    Ok(hyper::body::Frame::data(Bytes::from_static(b"first part;"))),
                    1,
                )),
                1 => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Some((Err(BoxError::from("the backend broke mid-body")), 2))
                }
                _ => None,
            }
        });
        return Response::new(http_body_util::StreamBody::new(chunks).boxed_unsync());
    }
    let (parts, body) = req.into_parts();
    let body_len = body
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let v = json!({
        "upstream": &*name,
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "host": parts.headers.get("host").and_then(|h| h.to_str().ok()),
        "version": format!("{:?}", parts.version),
        "body_len": body_len,
    });
    let mut r = Response::new(full(v.to_string()));
    *r.status_mut() = http::StatusCode::from_u16(b.status.load(Ordering::SeqCst)).unwrap();
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

// ---------------------------------------------------------------- polling

/// Polls `f` every 10ms until it is true or `within` passed.
pub async fn eventually<F: FnMut() -> bool>(within: Duration, mut f: F) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if f() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ---------------------------------------------------------------- TLS

/// A CA, a server certificate for `names` and a client certificate, all written into `dir`
/// as `ca.pem`, `server.pem`/`server.key`, `client.pem`/`client.key`.
pub struct Pki {
    pub ca: rustls_pki_types::CertificateDer<'static>,
    pub server_chain: Vec<rustls_pki_types::CertificateDer<'static>>,
    pub server_key: rustls_pki_types::PrivateKeyDer<'static>,
}

impl Pki {
    pub fn write_into(dir: &std::path::Path, names: &[&str]) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Upstream Test CA");
        let ca =
            rcgen::CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();

        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "upstream");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &ca).unwrap();
        std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();

        let mut cparams = CertificateParams::new(Vec::<String>::new()).unwrap();
        cparams
            .distinguished_name
            .push(DnType::CommonName, "gateway");
        let ckey = KeyPair::generate().unwrap();
        let ccert = cparams.signed_by(&ckey, &ca).unwrap();
        std::fs::write(dir.join("client.pem"), ccert.pem()).unwrap();
        std::fs::write(dir.join("client.key"), ckey.serialize_pem()).unwrap();

        Pki {
            ca: ca.der().clone(),
            server_chain: vec![cert.der().clone()],
            server_key: rustls_pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
        }
    }
}

/// What a TLS backend saw of each handshake.
#[derive(Debug, Clone)]
pub struct Handshake {
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub client_cert: bool,
}

/// An HTTPS backend: certificate from `pki`, ALPN h2 and http/1.1, client certificates
/// verified against the CA (required when `require_client_cert`). Answers like [`Backend`].
pub struct TlsBackend {
    pub addr: SocketAddr,
    pub handshakes: Arc<Mutex<Vec<Handshake>>>,
    task: JoinHandle<()>,
    _backend: Arc<Behaviour>,
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsBackend {
    pub async fn start(name: &str, pki: &Pki, require_client_cert: bool) -> TlsBackend {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca.clone()).unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        );
        let verifier = if require_client_cert {
            verifier.build().unwrap()
        } else {
            verifier.allow_unauthenticated().build().unwrap()
        };
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
            .unwrap();
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handshakes = Arc::new(Mutex::new(Vec::new()));
        let b = Behaviour::new();
        let (seen, name, behaviour) = (handshakes.clone(), Arc::<str>::from(name), b.clone());
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen, name, b) = (
                    acceptor.clone(),
                    seen.clone(),
                    name.clone(),
                    behaviour.clone(),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, conn) = tls.get_ref();
                    seen.lock().unwrap().push(Handshake {
                        sni: conn.server_name().map(str::to_owned),
                        alpn: conn
                            .alpn_protocol()
                            .map(|p| String::from_utf8_lossy(p).into_owned()),
                        client_cert: conn.peer_certificates().is_some_and(|c| !c.is_empty()),
                    });
                    let svc = hyper::service::service_fn(move |req| {
                        let (name, b) = (name.clone(), b.clone());
                        async move { Ok::<_, Infallible>(answer(name, b, req).await) }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsBackend {
            addr,
            handshakes,
            task,
            _backend: b,
        }
    }

    pub fn last(&self) -> Option<Handshake> {
        self.handshakes.lock().unwrap().last().cloned()
    }
}

// ---------------------------------------------------------------- DNS

/// A fake name server on 127.0.0.1 (UDP) that answers every SRV query with the records it
/// currently holds: `(port, weight)` pairs, all with target `localhost`.
pub struct FakeDns {
    pub addr: SocketAddr,
    pub records: Arc<Mutex<Vec<(u16, u16)>>>,
    pub queries: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeDns {
    pub async fn start(records: Vec<(u16, u16)>) -> FakeDns {
        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = sock.local_addr().unwrap();
        let records = Arc::new(Mutex::new(records));
        let queries = Arc::new(AtomicUsize::new(0));
        let (recs, count) = (records.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((n, peer)) = sock.recv_from(&mut buf).await {
                count.fetch_add(1, Ordering::SeqCst);
                let srv: Vec<portcullis::upstream::dns::Srv> = recs
                    .lock()
                    .unwrap()
                    .iter()
                    .map(|&(port, weight)| portcullis::upstream::dns::Srv {
                        priority: 10,
                        weight,
                        port,
                        target: "localhost".into(),
                    })
                    .collect();
                let resp = portcullis::upstream::dns::encode_response(&buf[..n], &srv, false);
                let _ = sock.send_to(&resp, peer).await;
            }
        });
        FakeDns {
            addr,
            records,
            queries,
            task,
        }
    }

    pub fn set(&self, records: Vec<(u16, u16)>) {
        *self.records.lock().unwrap() = records;
    }
}
