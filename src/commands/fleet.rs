//! `lorafleet serve` and `lorafleet worker`: the two long-running processes
//! of a fleet. Both are thin: flags and environment become a
//! `coordinator::server::ServerConfig` or `coordinator::agent::AgentConfig`,
//! logs go to stderr, and SIGINT/SIGTERM stop them cleanly.
//!
//! `serve` prints a readiness line, `listening on http://ADDR` (`https://`
//! with `--tls-cert`; the prefix is `local_fleet::READINESS_PREFIX`, which
//! the fleets and tests that start `serve` read), once the port is bound (so `--listen 127.0.0.1:0`
//! works); `worker` prints
//! `worker ID registered with URL` once it joined.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use coordinator::agent::{self, AgentConfig};
use coordinator::client::{TrustedCa, coordinator_url};
use coordinator::local_fleet::READINESS_PREFIX;
use coordinator::server::tls::ServerTls;
use coordinator::server::{self, Access, DevTokens, ServerConfig};

use super::UsageError;
use crate::cli::{ServeArgs, WorkerArgs};
use crate::connection::block_on;

pub use coordinator::agent::CLUSTER_TOKEN_ENV;

pub fn run_serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logs();
    let access = match &args.config {
        Some(path) => Access::from_file(path).map_err(|e| UsageError(e.to_string()))?,
        None => {
            let from_env = |name: &str| std::env::var(name).ok().filter(|t| !t.is_empty());
            let tokens = DevTokens {
                tenant: from_env("LORAFLEET_TOKEN").unwrap_or_else(coordinator::store::new_token),
                cluster: from_env(CLUSTER_TOKEN_ENV).unwrap_or_else(coordinator::store::new_token),
            };
            println!("development setup: one tenant (default), tokens below");
            println!("export LORAFLEET_TOKEN={}", tokens.tenant);
            println!("export {CLUSTER_TOKEN_ENV}={}", tokens.cluster);
            Access::development(&tokens)
        }
    };
    let seconds = |what: &str, s: f64| {
        if s > 0.0 && s.is_finite() {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(UsageError(format!(
                "{what} {s} is not a positive number of seconds"
            )))
        }
    };
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        let mut name = args.state.clone().into_os_string();
        name.push(".d");
        PathBuf::from(name)
    });
    let data_dir = std::path::absolute(&data_dir)?;
    let mut config = ServerConfig::new(args.state.clone(), data_dir, access);
    config.lost_after = seconds("--lost-after", args.lost_after)?;
    config.grace = seconds("--grace", args.grace)?;
    config.restart_backoff = if args.restart_backoff == 0.0 {
        Duration::ZERO
    } else {
        seconds("--restart-backoff", args.restart_backoff)?
    };
    config.heartbeat = Duration::from_millis(args.heartbeat_ms.max(50));
    config.metrics_public = args.metrics_public;
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let tls = ServerTls::load(cert, key).map_err(|e| UsageError(e.to_string()))?;
        config.tls = Some(tls);
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    block_on(async move {
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        let address = listener.local_addr()?;
        if config.tls.is_none() && !address.ip().is_loopback() {
            tracing::warn!(
                "serving without TLS on {address}: tokens and worker secrets cross the network in clear (see --tls-cert, --tls-key)"
            );
        }
        println!("{READINESS_PREFIX}{scheme}://{address}");
        use std::io::Write;
        std::io::stdout().flush()?;
        server::serve(config, listener, stop_signal())
            .await
            .context("the coordinator stopped")
    })
}

pub fn run_worker(args: WorkerArgs) -> anyhow::Result<()> {
    init_logs();
    let Some(cluster_token) = args.cluster_token.filter(|t| !t.is_empty()) else {
        anyhow::bail!(UsageError(format!(
            "no cluster token: set {CLUSTER_TOKEN_ENV} (serve prints it in a development setup)"
        )));
    };
    let ca = args
        .ca
        .as_deref()
        .filter(|path| !path.as_os_str().is_empty())
        .map(TrustedCa::load)
        .transpose()
        .map_err(|e| UsageError(e.to_string()))?;
    // A URL that cannot be used with this CA is a mistake to say now,
    // not a reason to retry.
    coordinator_url(&args.coordinator, ca.as_ref()).map_err(|e| UsageError(e.to_string()))?;
    let host = hostname();
    let ring_port = match args.ring_port {
        0 => {
            let host = args.ring_host.as_deref().unwrap_or("0.0.0.0");
            std::net::TcpListener::bind((host, 0))
                .and_then(|l| l.local_addr())
                .with_context(|| format!("cannot find a free port on {host}"))?
                .port()
        }
        port => port,
    };
    // A temporary folder only when none is given: a worker killed with
    // SIGKILL cannot remove it.
    let scratch;
    let work_dir = match args.work_dir {
        Some(dir) => dir,
        None => {
            scratch = tempfile::Builder::new()
                .prefix("lorafleet-worker-")
                .tempdir()
                .context("cannot create a work folder")?;
            scratch.path().to_path_buf()
        }
    };
    let hardware = super::worker_device::advertised(args.backend.as_deref(), total_memory())?;
    let config = AgentConfig {
        coordinator: args.coordinator,
        cluster_token,
        name: args
            .name
            .unwrap_or_else(|| format!("{host}/{}", std::process::id())),
        host,
        backend: hardware.backend,
        device: hardware.device,
        memory_bytes: hardware.memory_bytes,
        ring_host: args.ring_host,
        ring_port,
        launcher: std::sync::Arc::new(super::train::TrainLauncher {
            program: std::env::current_exe().context("cannot find this program's path")?,
            ring_timeout: args.ring_timeout,
        }),
        work_dir,
        ca,
    };
    block_on(agent::run(config, stop_signal())).context("the worker stopped")
}

/// Completes on SIGINT or SIGTERM.
pub async fn stop_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = interrupt => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = interrupt.await;
}

/// Log lines on stderr; `RUST_LOG`-style filtering is not needed here:
/// info and above.
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_max_level(tracing::Level::INFO)
        .try_init();
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Physical memory in bytes, from /proc/meminfo (0 when unknown).
fn total_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| {
            let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}
