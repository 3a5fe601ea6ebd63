//! `lorafleet run FILE [KEY=VALUE ...] [--workers N]`: the embedded fleet. Starts a
//! coordinator on 127.0.0.1 with a temporary SQLite file and N worker
//! processes of this same binary, submits the spec, follows it with
//! progress bars, downloads the final adapter to the spec's `output.dir`,
//! and stops every process it started, also on Ctrl-C (exit 130).
//!
//! It is the same path as a real cluster (`serve`, `worker`, `submit`,
//! `download`), only on one machine. A coordinator that stops while the
//! job runs is started again on its address and state file (up to 3
//! times); the workers and the follower reconnect to it. The processes' logs go to files in the
//! temporary folder; the last lines of each are shown if the job fails.
//!
//! Not here: its flags (`cli::RunArgs`), starting and stopping the
//! processes (`coordinator::local_fleet::LocalFleet`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coordinator::client::{Connection, WorkerState};
use coordinator::local_fleet::{LocalFleet, LocalFleetError};
use job::JobSpec;
use job::spec::{LoadedSpec, PathOrUrl};

use super::UsageError;
use super::download::download_checkpoint;
use super::fleet::stop_signal;
use super::logs::{Reconnect, final_outcome, follow};
use super::submit::submit_loaded;
use crate::cli::{RemoteArgs, RunArgs};
use crate::connection::{block_on, connect, transient_call};
use crate::output::job_json;

/// How many times `run` starts its coordinator again after it stopped.
const MAX_RESTARTS: u32 = 3;

/// Interrupted by the user (exit code 130).
#[derive(Debug, thiserror::Error)]
#[error("interrupted; every process started was stopped")]
pub struct Interrupted;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let loaded = JobSpec::from_file_with_overrides(&args.file, &args.overrides)?;
    let spec = &loaded.spec;
    let workers = args.workers.unwrap_or(spec.resources.workers.max);
    if workers == 0 || workers > 64 {
        bail!(UsageError(format!(
            "--workers {workers}: an embedded fleet has 1 to 64 workers"
        )));
    }
    if !spec.usable_worker_counts().contains(&workers) {
        bail!(UsageError(format!(
            "--workers {workers}: the spec runs on {} worker(s) (resources.workers: {}, and global_batch_size {} must divide evenly)",
            list(&spec.usable_worker_counts()),
            spec.resources.workers,
            spec.training.global_batch_size
        )));
    }
    let output = match &spec.output.dir {
        Some(PathOrUrl::Path(dir)) => dir.clone(),
        Some(PathOrUrl::Url(url)) => bail!(UsageError(format!(
            "output.dir: {url}: `run` downloads the adapter to a local folder"
        ))),
        None => PathBuf::from("runs").join(&spec.name).join("final"),
    };
    let scratch = tempfile::Builder::new()
        .prefix("lorafleet-run-")
        .tempdir()
        .context("cannot create a temporary folder")?;
    let mut fleet = start_fleet(scratch.path(), workers, spec.resources.backend.name())?;
    let outcome = block_on(async {
        tokio::select! {
            outcome = drive(&mut fleet, &args, &loaded, &output) => outcome,
            () = stop_signal() => Err(Interrupted.into()),
        }
    });
    if outcome.is_err() && !outcome.as_ref().is_err_and(|e| e.is::<Interrupted>()) {
        show_logs(&fleet);
    }
    fleet.stop();
    outcome
}

/// Submit, follow, download. The coordinator is started again if it
/// stops while the job runs, and a download the coordinator breaks off
/// is made again (both as `logs -f` waits: [`Reconnect`]).
async fn drive(
    fleet: &mut LocalFleet,
    args: &RunArgs,
    loaded: &LoadedSpec,
    output: &Path,
) -> anyhow::Result<()> {
    let conn = connect(&RemoteArgs::new(fleet.url(), fleet.tenant_token())).await?;
    wait_for_workers(fleet, &conn).await?;
    // The model is named by its path: the workers are on this host.
    let job = submit_loaded(&conn, &args.file, loaded, false).await?;
    eprintln!(
        "job {} ({}) on {} local worker(s)",
        job.id,
        job.name,
        fleet.worker_count()
    );
    eprintln!(
        "console and OpenAI-compatible API at {}/ while it runs (token {})",
        fleet.url(),
        fleet.tenant_token()
    );
    let started = Instant::now();
    let mut restarts = 0;
    let following = follow(&conn, &job.id, args.json);
    tokio::pin!(following);
    let job = loop {
        tokio::select! {
            job = &mut following => break job?,
            () = tokio::time::sleep(Duration::from_millis(250)) => keep_coordinator_up(fleet, &mut restarts)?,
        }
    };
    final_outcome(&job)?;
    let mut reconnect = Reconnect::new(conn.url());
    let summary = loop {
        match download_checkpoint(&conn, &job.id, "latest", output).await {
            Ok(summary) => break summary,
            Err(err) => match transient_call(&err) {
                Some(status) => {
                    keep_coordinator_up(fleet, &mut restarts)?;
                    reconnect.pause(&status, |note| eprintln!("{note}")).await?;
                }
                None => return Err(err),
            },
        }
    };
    eprintln!(
        "job {} succeeded in {:.1} s: step {}, adapter in {}",
        job.id,
        started.elapsed().as_secs_f64(),
        summary.step,
        output.display()
    );
    if args.json {
        println!("{}", job_json(&job));
    }
    Ok(())
}

/// Starts a coordinator with its state and logs in `dir`, and `workers`
/// workers (`local-0`, ...) of `backend` (`cpu`, `cuda`), all children of
/// this binary on 127.0.0.1.
pub(crate) fn start_fleet(dir: &Path, workers: u32, backend: &str) -> anyhow::Result<LocalFleet> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let started = LocalFleet::builder(exe, dir.join("state.db"))
        .serve_args(["--grace", "5"])
        .worker_args(["--backend", backend])
        .logs_in(dir)
        .start();
    let mut fleet = match started {
        Ok(fleet) => fleet,
        Err(LocalFleetError::NotReady { log }) => {
            // The folder goes with `run`: its lines, not its path.
            if let Some(log) = log {
                show_log_tail(&log, &read_tail(&log));
            }
            bail!("the coordinator did not start");
        }
        Err(err) => return Err(err.into()),
    };
    for i in 0..workers {
        if let Err(err) = fleet.add_worker(&format!("local-{i}"), NO_ARGS) {
            return Err(anyhow::Error::new(err).context("cannot start a worker"));
        }
    }
    Ok(fleet)
}

const NO_ARGS: [&str; 0] = [];

/// Waits until every worker of `fleet` has joined (at most 30 s).
pub(crate) async fn wait_for_workers(fleet: &LocalFleet, conn: &Connection) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let workers = conn.list_workers().await?;
        let idle = workers
            .iter()
            .filter(|w| w.state == WorkerState::Idle)
            .count();
        if idle >= fleet.worker_count() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "only {idle} of {} workers joined within 30 s",
                fleet.worker_count()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts the coordinator again, on the same address and state file, if it
/// died (killed, crashed; not if it stopped cleanly when asked): the
/// workers keep their jobs and reconnect, and so does the follower. At
/// most [`MAX_RESTARTS`] times (`restarts` counts them).
fn keep_coordinator_up(fleet: &mut LocalFleet, restarts: &mut u32) -> anyhow::Result<()> {
    let Some(ended) = fleet.coordinator_exit() else {
        return Ok(());
    };
    if ended.success() {
        // Stopped when asked (SIGTERM, or the Ctrl-C that is also on
        // its way to `run`): not a crash to undo.
        return Ok(());
    }
    if *restarts == MAX_RESTARTS {
        bail!(
            "the coordinator stopped ({ended}) after {MAX_RESTARTS} restarts; see its log lines below"
        );
    }
    *restarts += 1;
    let address = fleet
        .url()
        .split_once("://")
        .map_or(fleet.url(), |(_, rest)| rest)
        .to_string();
    match fleet.restart_coordinator() {
        Ok(()) => {
            eprintln!("the coordinator stopped ({ended}); started it again on {address}");
            Ok(())
        }
        Err(LocalFleetError::NotReady { .. } | LocalFleetError::Moved { .. }) => {
            bail!("the coordinator stopped ({ended}) and did not start again on {address}")
        }
        Err(err) => Err(err.into()),
    }
}

/// Prints the last lines of every process's log.
fn show_logs(fleet: &LocalFleet) {
    for (path, tail) in fleet.log_tails(15) {
        show_log_tail(&path, &tail);
    }
}

fn show_log_tail(path: &Path, tail: &[String]) {
    if tail.is_empty() {
        return;
    }
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    eprintln!("--- last lines of {name}:");
    for line in tail {
        eprintln!("{line}");
    }
}

fn read_tail(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..]
        .iter()
        .map(|l| l.to_string())
        .collect()
}

fn list(counts: &[u32]) -> String {
    let items: Vec<String> = counts.iter().map(u32::to_string).collect();
    items.join(" or ")
}
