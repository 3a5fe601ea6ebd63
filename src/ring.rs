//! Rings from the command line: joining one as a rank (`--rank/--world/
//! --peers`, secret from the environment), and starting N ranks of this
//! binary on 127.0.0.1 for the benchmarks. A helper of `train` and
//! `bench` (`train --world N`, `allreduce`, `checkpoint`), not a subcommand.
//!
//! Not here: the ring itself (`trainer::collective`), the flags
//! (`cli::RingArgs`, `cli::LinkArgs`), or placing ranks on a fleet (the
//! coordinator).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use trainer::collective::{self, Collective, RingConfig, SECRET_ENV};

use crate::cli::{LinkArgs, RingArgs};
use crate::commands::UsageError;

/// The ring configuration of rank `rank` among `peers`.
pub fn ring_config(rank: usize, peers: &[String], link: &LinkArgs) -> anyhow::Result<RingConfig> {
    if rank >= peers.len() {
        bail!(UsageError(format!(
            "--rank {rank} is outside the {} --peers given",
            peers.len()
        )));
    }
    let secret = if peers.len() > 1 {
        match std::env::var(SECRET_ENV) {
            Ok(s) if s.len() >= 16 => s.into_bytes(),
            Ok(_) => bail!(UsageError(format!(
                "{SECRET_ENV} must have at least 16 characters"
            ))),
            Err(_) => bail!(UsageError(format!(
                "{SECRET_ENV} is not set: every rank of a job needs the attempt's secret"
            ))),
        }
    } else {
        Vec::new()
    };
    if !(link.ring_timeout > 0.0 && link.ring_timeout.is_finite()) {
        bail!(UsageError(format!(
            "--ring-timeout {} is not a positive number of seconds",
            link.ring_timeout
        )));
    }
    let mut config = RingConfig::new(rank, peers.to_vec(), secret);
    config.timeout = Duration::from_secs_f64(link.ring_timeout);
    config.transport = link.transport.transport();
    config.chunk_bytes = link.ring_chunk_kib.max(1) * 1024;
    config.shared_group = !link.no_shared_group;
    Ok(config)
}

/// The ring configuration of `train --rank/--world/--peers` (`None`
/// without them), checked before any slow work so a mistake fails at once.
pub fn plan(args: &RingArgs) -> anyhow::Result<Option<RingConfig>> {
    let Some(rank) = args.rank else {
        return Ok(None);
    };
    let world = args.world.unwrap_or(args.peers.len());
    if world != args.peers.len() {
        bail!(UsageError(format!(
            "--world {world} but {} --peers: list every rank's host:port, this one's included",
            args.peers.len()
        )));
    }
    ring_config(rank, &args.peers, &args.link).map(Some)
}

/// Joins the ring `plan` gave, or runs alone ([`collective::Solo`]).
pub fn join(plan: Option<RingConfig>) -> anyhow::Result<Box<dyn Collective>> {
    let Some(config) = plan else {
        return Ok(Box::new(collective::Solo));
    };
    collective::open(&config).with_context(|| format!("rank {} cannot join the ring", config.rank))
}

/// [`join`] for a job on `backend`: ranks on GPUs move their data with
/// NCCL, set up over the ring ([`trainer::collective::nccl`]); one rank
/// needs neither.
pub fn join_on(
    plan: Option<RingConfig>,
    backend: trainer::device::ComputeBackend,
) -> anyhow::Result<Box<dyn Collective>> {
    let gpu_ring = plan
        .as_ref()
        .filter(|c| c.world() > 1 && backend == trainer::device::ComputeBackend::Cuda)
        .map(|c| (c.rank, c.timeout));
    let ring = join(plan)?;
    let Some((rank, timeout)) = gpu_ring else {
        return Ok(ring);
    };
    nccl_beside(ring, timeout).with_context(|| format!("rank {rank} cannot set up NCCL"))
}

#[cfg(feature = "cuda")]
pub fn nccl_beside(
    ring: Box<dyn Collective>,
    timeout: Duration,
) -> anyhow::Result<Box<dyn Collective>> {
    Ok(Box::new(trainer::collective::nccl::cuda::connect(
        ring, timeout,
    )?))
}

#[cfg(not(feature = "cuda"))]
pub fn nccl_beside(
    _ring: Box<dyn Collective>,
    _timeout: Duration,
) -> anyhow::Result<Box<dyn Collective>> {
    Err(trainer::device::DeviceError::NotBuilt { backend: "cuda" }.into())
}

/// `world` addresses on 127.0.0.1 that were free a moment ago.
pub fn free_local_peers(world: usize) -> anyhow::Result<Vec<String>> {
    let listeners = (0..world)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("cannot find free ports on 127.0.0.1")?;
    Ok(listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.to_string()))
        .collect::<Result<_, _>>()?)
}

/// A fresh attempt secret: 32 random bytes in hex.
pub fn new_secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Starts `world` processes of this binary with `args(rank, peers)`, the
/// same fresh secret, and their stdout piped; waits for all of them and
/// returns each one's stdout. A rank that fails fails the whole launch
/// (its stderr went to ours).
pub fn run_local_ranks(
    world: usize,
    args: impl Fn(usize, &str) -> Vec<String>,
) -> anyhow::Result<Vec<String>> {
    run_local_ranks_with(world, args, |_| Vec::new())
}

/// [`run_local_ranks`] with environment variables of each rank's own
/// (`CUDA_VISIBLE_DEVICES`, say).
pub fn run_local_ranks_with(
    world: usize,
    args: impl Fn(usize, &str) -> Vec<String>,
    env: impl Fn(usize) -> Vec<(String, String)>,
) -> anyhow::Result<Vec<String>> {
    let peers = free_local_peers(world)?.join(",");
    let secret = new_secret();
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let mut children: Vec<Child> = Vec::with_capacity(world);
    for rank in 0..world {
        let child = Command::new(&exe)
            .args(args(rank, &peers))
            .env(SECRET_ENV, &secret)
            .envs(env(rank))
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start rank {rank}"))?;
        children.push(child);
    }
    let mut outputs = Vec::with_capacity(world);
    let mut failed = Vec::new();
    for (rank, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            failed.push(format!("rank {rank} ({})", out.status));
        }
        outputs.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    if !failed.is_empty() {
        bail!("{} failed", failed.join(", "));
    }
    Ok(outputs)
}
