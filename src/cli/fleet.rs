//! The flags of the fleet's two long-running processes: `serve` (the
//! coordinator) and `worker` (an agent).
//!
//! Not here: starting them (`commands::fleet`).

use std::path::PathBuf;

use clap::Args;
use coordinator::agent::CLUSTER_TOKEN_ENV;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on; port 0 picks a free one (see the readiness line).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// The SQLite file holding the coordinator's state (created if missing).
    #[arg(long, default_value = "lorafleet.db")]
    pub state: PathBuf,
    /// Tenants, token hashes and storage rules (YAML). Without it, a
    /// single-tenant development setup whose tokens are printed (or taken
    /// from LORAFLEET_TOKEN and LORAFLEET_CLUSTER_TOKEN when set).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Where uploaded datasets are kept (default: next to --state).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Seconds of silence after which a worker is lost.
    #[arg(long, default_value_t = 15.0, value_name = "SECONDS")]
    pub lost_after: f64,
    /// Milliseconds between worker reports.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    pub heartbeat_ms: u64,
    /// Seconds after a start during which workers may reconnect before
    /// their silence counts.
    #[arg(long, default_value_t = 30.0, value_name = "SECONDS")]
    pub grace: f64,
    /// Seconds a failed job waits before its next attempt; doubles with
    /// each failure of the job, up to 60.
    #[arg(long, default_value_t = 2.0, value_name = "SECONDS")]
    pub restart_backoff: f64,
    /// Serve TLS on the listening port with this PEM certificate chain
    /// (the coordinator's certificate first); clients then connect to
    /// https://HOST:PORT and verify it (--ca or LORAFLEET_CA).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve /metrics' fleet-wide figures (jobs by status, workers,
    /// requests, checkpoint uploads) without a token; per-job series
    /// still need an operator's token or the cluster token.
    #[arg(long)]
    pub metrics_public: bool,
}

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// The coordinator's address.
    #[arg(
        long,
        env = "LORAFLEET_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    pub coordinator: String,
    /// The cluster token (better set in LORAFLEET_CLUSTER_TOKEN).
    #[arg(long, env = CLUSTER_TOKEN_ENV, hide_env_values = true)]
    pub cluster_token: Option<String>,
    /// A name for people (default: HOST/PID).
    #[arg(long)]
    pub name: Option<String>,
    /// The address other ranks reach this worker's ring on (default: the
    /// local address of its connection to the coordinator, found again at
    /// every connection).
    #[arg(long)]
    pub ring_host: Option<String>,
    /// The ring port (0: a free one picked at start).
    #[arg(long, default_value_t = 0)]
    pub ring_port: u16,
    /// Where assigned specs are written (default: a temporary folder).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Seconds a ring operation may wait on a peer.
    #[arg(long, default_value_t = 60.0, value_name = "SECONDS")]
    pub ring_timeout: f64,
    /// The PEM CA bundle that signed the coordinator's TLS certificate:
    /// the only roots trusted (default: the public ones); a bare
    /// --coordinator host:port then means https://, and http:// is refused.
    #[arg(long, env = "LORAFLEET_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// The backend this worker offers (default: cuda in a `cuda` build,
    /// cpu otherwise); jobs are placed on workers of their backend.
    #[arg(long, value_parser = ["cpu", "cuda"])]
    pub backend: Option<String>,
}
