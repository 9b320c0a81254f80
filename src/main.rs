//! The `portcullis` command: run, validate, routes, demo, hash-key, hash-password.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use portcullis::server::{self, ConfigSource, Options};
use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: per-thread free lists make the proxy's many small, short-lived allocations
/// (header maps, bodies, futures) cheaper than glibc's malloc.
#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// mimalloc behind Rust's allocator interface, the way std's own `System` allocator uses
/// malloc: the plain entry points when their guarantee (16-byte alignment for blocks of 16
/// bytes or more, word alignment below) covers the layout, the aligned ones otherwise.
/// The `mimalloc` crate's binding always takes the aligned ones, which cost more on every
/// call for the alignment nearly no allocation asks.
struct MiMalloc;

/// What `mi_malloc` guarantees: `max_align_t` (MI_MAX_ALIGN_SIZE).
const PLAIN_ALIGN: usize = 16;

fn plain(align: usize, size: usize) -> bool {
    align <= PLAIN_ALIGN && align <= size
}

// SAFETY: every entry point forwards to mimalloc, whose blocks satisfy the layouts `plain`
// lets through unaligned (mimalloc rounds blocks of 16 bytes or more to 16, and aligns every
// block to its word), and the aligned calls honour any other; `mi_free` frees either kind.
unsafe impl std::alloc::GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: plain FFI calls; mimalloc returns null on failure, as the trait wants.
        unsafe {
            if plain(layout.align(), layout.size()) {
                libmimalloc_sys::mi_malloc(layout.size()).cast()
            } else {
                libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(layout.align(), layout.size()) {
                libmimalloc_sys::mi_zalloc(layout.size()).cast()
            } else {
                libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: std::alloc::Layout) {
        // SAFETY: `ptr` came from this allocator, i.e. from mimalloc.
        unsafe { libmimalloc_sys::mi_free(ptr.cast()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        // SAFETY: `ptr` came from mimalloc; the new block keeps `layout`'s alignment (the
        // plain path only where that alignment is guaranteed for the new size too).
        unsafe {
            if plain(layout.align(), new) {
                libmimalloc_sys::mi_realloc(ptr.cast(), new).cast()
            } else {
                libmimalloc_sys::mi_realloc_aligned(ptr.cast(), new, layout.align()).cast()
            }
        }
    }
}

#[derive(Parser)]
#[command(
    name = "portcullis",
    version,
    about = "An API gateway: one YAML file, compiled, hot-reloaded."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the gateway with a config file (reloads on file change and SIGHUP).
    Run {
        /// The YAML config file.
        #[arg(short, long, env = "PORTCULLIS_CONFIG")]
        config: PathBuf,
    },
    /// Check a config file; prints every error with file:line:column and field path.
    Validate {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Print the compiled route table of a config file.
    Routes {
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Run the bundled quick-start config with a built-in demo upstream.
    Demo {
        /// Where the demo gateway listens.
        #[arg(long, default_value = "127.0.0.1:8080")]
        bind: String,
        /// Where the demo's admin listener listens.
        #[arg(long, default_value = "127.0.0.1:9900")]
        admin_bind: String,
    },
    /// Print the stored form (sha256:<hex>) of an API key for consumers[].api_keys.
    HashKey {
        /// The key; read from stdin when absent (keeps it out of shell history).
        key: Option<String>,
        /// Make a new random key; prints the key, then its stored form.
        #[arg(long, conflicts_with = "key")]
        generate: bool,
    },
    /// Print an argon2id hash of a password for consumers[].basic.password.
    HashPassword {
        /// The password; read from stdin when absent (keeps it out of shell history).
        password: Option<String>,
    },
}

/// One line of stdin without its line ending.
fn read_secret(what: &str) -> Result<String> {
    use std::io::{BufRead, IsTerminal};
    if std::io::stdin().is_terminal() {
        eprint!("{what}: ");
    }
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .context("reading stdin")?;
    let line = line.trim_end_matches(['\n', '\r']).to_owned();
    anyhow::ensure!(!line.is_empty(), "the {what} is empty");
    Ok(line)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.cmd {
        Cmd::HashKey { key, generate } => {
            use portcullis::auth::api_key;
            if generate {
                let key = api_key::generate();
                println!("{key}");
                println!("{}", api_key::stored_form(&key));
                eprintln!(
                    "first line: the key, for the client; second line: for consumers[].api_keys"
                );
            } else {
                let key = match key {
                    Some(k) => k,
                    None => read_secret("API key")?,
                };
                println!("{}", api_key::stored_form(&key));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::HashPassword { password } => {
            let password = match password {
                Some(p) => p,
                None => read_secret("password")?,
            };
            let hash = portcullis::auth::basic::hash_password(&password)
                .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?;
            println!("{hash}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Validate { config } => {
            let pools = portcullis::upstream::Pools::default();
            match portcullis::compile::load_and_compile(&config, &pools) {
                Ok(gw) => {
                    println!(
                        "{}: ok ({} routes, {} upstreams, {} listeners)",
                        config.display(),
                        gw.routes.len(),
                        gw.upstreams.len(),
                        gw.listeners.len()
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(d) => {
                    eprint!("{d}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Cmd::Routes { config } => {
            let pools = portcullis::upstream::Pools::default();
            match portcullis::compile::load_and_compile(&config, &pools) {
                Ok(gw) => {
                    print!("{}", gw.route_table());
                    Ok(ExitCode::SUCCESS)
                }
                Err(d) => {
                    eprint!("{d}");
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Cmd::Run { config } => {
            // Compile once up front: the runtime's size comes from the file, and a bad file
            // gets every error (decode and compile alike), as `validate` prints them.
            let pools = portcullis::upstream::Pools::default();
            let workers = match portcullis::compile::load_and_compile(&config, &pools) {
                Ok(gw) => gw.workers,
                Err(d) => {
                    eprint!("{d}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            serve(Options::file(config), workers)
        }
        Cmd::Demo { bind, admin_bind } => {
            let rt = runtime(None)?;
            rt.block_on(async {
                let echo = portcullis::demo::start_echo()
                    .await
                    .context("starting the demo upstream")?;
                let mut vars = HashMap::new();
                vars.insert("PORTCULLIS_DEMO_UPSTREAM".to_owned(), echo.to_string());
                vars.insert("PORTCULLIS_BIND".to_owned(), bind);
                vars.insert("PORTCULLIS_ADMIN_BIND".to_owned(), admin_bind);
                let opts = Options {
                    source: ConfigSource::Inline {
                        name: "examples/quickstart.yaml (bundled)".into(),
                        text: portcullis::demo::QUICKSTART.into(),
                        vars,
                    },
                    watch: false,
                    sighup: false,
                };
                tracing::info!(upstream = %echo, "demo upstream started");
                serve_until_signal(opts).await
            })
        }
    }
}

fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    // One worker: a current-thread runtime does the same work without the cross-thread wake-ups
    // and work-stealing bookkeeping of a one-thread pool (the shape of one nginx worker).
    let mut b = if workers == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    b.enable_all();
    // Each wake-up takes the clock reading that seconds-scale deadlines reuse (`clock`).
    b.on_thread_unpark(portcullis::clock::tick);
    if let Some(w) = workers.filter(|&w| w > 1) {
        b.worker_threads(w);
    }
    b.build().context("starting the async runtime")
}

fn serve(opts: Options, workers: Option<usize>) -> Result<ExitCode> {
    runtime(workers)?.block_on(serve_until_signal(opts))
}

async fn serve_until_signal(opts: Options) -> Result<ExitCode> {
    // Handlers first: a SIGTERM that comes once the listeners answer (and before the wait
    // below begins) must drain, not kill the process with the default action.
    let stop = stop_signals()?;
    let handle = match server::start(opts).await {
        Ok(h) => h,
        Err(server::StartError::Config(d)) => {
            eprint!("{d}");
            return Ok(ExitCode::FAILURE);
        }
        Err(e) => return Err(e.into()),
    };
    for (name, addr) in handle.addrs() {
        tracing::info!(%name, %addr, "portcullis is serving");
    }
    stop.await;
    tracing::info!("shutting down: draining in-flight requests");
    if handle.shutdown().await {
        tracing::info!("drained; bye");
    } else {
        tracing::warn!("grace period over; closing remaining connections");
    }
    Ok(ExitCode::SUCCESS)
}

/// Completes on SIGTERM or SIGINT (Ctrl-C); the handlers are installed when this returns.
fn stop_signals() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}

#[cfg(test)]
mod alloc_tests {
    use std::alloc::{GlobalAlloc, Layout};

    #[test]
    fn every_layout_comes_back_aligned_and_usable() {
        let a = super::MiMalloc;
        for align in [1usize, 2, 8, 16, 32, 64, 4096] {
            for size in [1usize, 7, 8, 15, 16, 24, 40, 100, 4096, 1 << 20] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; every pointer is freed with its layout.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "{size} bytes at {align}");
                    p.write_bytes(0xab, size);
                    let z = a.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                    a.dealloc(z, layout);
                    let grown = a.realloc(p, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "realloc {size} at {align}");
                    assert_eq!(*grown.add(size - 1), 0xab, "realloc keeps the bytes");
                    a.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                }
            }
        }
    }
}

#[cfg(test)]
mod runtime_tests {
    use portcullis::clock;
    use std::time::Duration;

    /// Both runtime shapes install the unpark hook that `clock::recent` relies on: a thread
    /// that runs the gateway's tasks caches its reading (no clock read between two calls)
    /// and takes a new one each time it wakes.
    #[test]
    fn the_gateways_runtimes_keep_and_refresh_the_recent_clock_reading() {
        for workers in [Some(1), Some(2)] {
            let rt = super::runtime(workers).unwrap();
            rt.block_on(async {
                tokio::spawn(async move {
                    // A wake-up first: the task may be the worker's first work.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let cached = clock::recent();
                    std::thread::sleep(Duration::from_millis(20));
                    assert_eq!(clock::recent(), cached, "{workers:?}: no reading kept");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    // One thread: it is the one that woke. (In a pool a worker that had not
                    // parked could steal the task, with its own older reading.)
                    if workers == Some(1) {
                        assert!(
                            clock::recent() >= cached + Duration::from_millis(40),
                            "not refreshed on waking"
                        );
                    }
                })
                .await
                .unwrap();
            });
        }
    }
}
