//! `lorafleet run FILE [--workers N]`: the embedded fleet. Starts a
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

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use job::JobSpec;
use job::spec::PathOrUrl;

use super::UsageError;
use super::download::download_checkpoint;
use super::fleet::{CLUSTER_TOKEN_ENV, stop_signal};
use super::logs::{Reconnect, final_outcome, follow};
use super::remote::{self, RemoteArgs, block_on};
use super::submit::submit_file;

/// How many times `run` starts its coordinator again after it stopped.
const MAX_RESTARTS: u32 = 3;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// The YAML job spec.
    pub file: PathBuf,
    /// Worker processes to start (default: the most the spec asks for).
    #[arg(long)]
    pub workers: Option<u32>,
    /// Print the job's events as NDJSON instead of progress bars.
    #[arg(long)]
    pub json: bool,
}

/// Interrupted by the user (exit code 130).
#[derive(Debug, thiserror::Error)]
#[error("interrupted; every process started was stopped")]
pub struct Interrupted;

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let spec = JobSpec::from_file(&args.file)?;
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
    let mut fleet = EmbeddedFleet::start(scratch.path(), workers, spec.resources.backend.name())?;
    let outcome = block_on(async {
        tokio::select! {
            outcome = drive(&mut fleet, &args, &output) => outcome,
            () = stop_signal() => Err(Interrupted.into()),
        }
    });
    if outcome.is_err() && !outcome.as_ref().is_err_and(|e| e.is::<Interrupted>()) {
        fleet.show_logs();
    }
    fleet.stop();
    outcome
}

/// Submit, follow, download. The coordinator is started again if it
/// stops while the job runs, and a download the coordinator breaks off
/// is made again (both as `logs -f` waits: [`Reconnect`]).
async fn drive(fleet: &mut EmbeddedFleet, args: &RunArgs, output: &Path) -> anyhow::Result<()> {
    let remote = RemoteArgs::new(&fleet.url, &fleet.token);
    let conn = remote::connect(&remote).await?;
    fleet.wait_for_workers(&conn).await?;
    let job = submit_file(&conn, &args.file).await?;
    eprintln!(
        "job {} ({}) on {} local worker(s)",
        job.id,
        job.name,
        fleet.workers.len()
    );
    let started = Instant::now();
    let following = follow(&conn, &job.id, args.json);
    tokio::pin!(following);
    let job = loop {
        tokio::select! {
            job = &mut following => break job?,
            () = tokio::time::sleep(Duration::from_millis(250)) => fleet.keep_coordinator_up()?,
        }
    };
    final_outcome(&job)?;
    let mut reconnect = Reconnect::new(conn.url());
    let summary = loop {
        match download_checkpoint(&conn, &job.id, "latest", output).await {
            Ok(summary) => break summary,
            Err(err) => match remote::transient_status(&err) {
                Some(status) => {
                    fleet.keep_coordinator_up()?;
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
        println!("{}", remote::job_json(&job));
    }
    Ok(())
}

/// The processes `run` started: a coordinator on 127.0.0.1 and its
/// workers, with the tokens to reach them. Stopped when dropped.
pub(crate) struct EmbeddedFleet {
    pub url: String,
    /// The development tenant's token.
    pub token: String,
    /// The workers' cluster token.
    pub cluster: String,
    pub server: Child,
    pub workers: Vec<Child>,
    logs: PathBuf,
    /// How many times the coordinator was started again.
    restarts: u32,
}

impl EmbeddedFleet {
    /// Starts a coordinator with its state in `dir`, and `workers` workers
    /// of `backend` (`cpu`, `cuda`).
    pub fn start(dir: &Path, workers: u32, backend: &str) -> anyhow::Result<EmbeddedFleet> {
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let token = coordinator::store::new_token();
        let cluster = coordinator::store::new_token();
        let log = |name: &str| -> anyhow::Result<Stdio> {
            let path = dir.join(format!("{name}.log"));
            Ok(std::fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?
                .into())
        };
        let listen = "127.0.0.1:0";
        let (server, stdout) =
            spawn_coordinator(&exe, dir, listen, &token, &cluster, log("coordinator")?)?;
        let mut fleet = EmbeddedFleet {
            url: String::new(),
            token,
            cluster: cluster.clone(),
            server,
            workers: Vec::new(),
            logs: dir.to_path_buf(),
            restarts: 0,
        };
        let Some(url) = readiness(stdout) else {
            fleet.show_logs();
            fleet.stop();
            bail!("the coordinator did not start");
        };
        fleet.url = url;
        for i in 0..workers {
            let child = Command::new(&exe)
                .args([
                    "worker",
                    "--backend",
                    backend,
                    "--coordinator",
                    &fleet.url,
                    "--name",
                ])
                .arg(format!("local-{i}"))
                .env(CLUSTER_TOKEN_ENV, &cluster)
                // The embedded coordinator is plain http:// on 127.0.0.1:
                // a CA meant for a remote fleet must not make them refuse it.
                .env_remove("LORAFLEET_CA")
                .stdout(Stdio::null())
                .stderr(log(&format!("worker-{i}"))?)
                .spawn();
            match child {
                Ok(child) => fleet.workers.push(child),
                Err(e) => {
                    fleet.stop();
                    return Err(e).context("cannot start a worker");
                }
            }
        }
        Ok(fleet)
    }

    /// Waits until every worker has joined (at most 30 s).
    pub async fn wait_for_workers(
        &self,
        conn: &coordinator::client::Connection,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let list = conn
                .workers()
                .list(coordinator::api::ListWorkersRequest {})
                .await
                .map_err(remote::rpc)?
                .into_inner();
            let idle = list.data.iter().filter(|w| w.state == "idle").count();
            if idle >= self.workers.len() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "only {idle} of {} workers joined within 30 s",
                    self.workers.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the coordinator again, on the same address and state file,
    /// if it died (killed, crashed; not if it stopped cleanly when asked):
    /// the workers keep their jobs and
    /// reconnect, and so does the follower. At most [`MAX_RESTARTS`] times.
    fn keep_coordinator_up(&mut self) -> anyhow::Result<()> {
        let Ok(Some(ended)) = self.server.try_wait() else {
            return Ok(());
        };
        if ended.success() {
            // Stopped when asked (SIGTERM, or the Ctrl-C that is also on
            // its way to `run`): not a crash to undo.
            return Ok(());
        }
        if self.restarts == MAX_RESTARTS {
            bail!(
                "the coordinator stopped ({ended}) after {MAX_RESTARTS} restarts; see its log lines below"
            );
        }
        self.restarts += 1;
        let address = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, rest)| rest)
            .to_string();
        let exe = std::env::current_exe().context("cannot find this program's path")?;
        let path = self.logs.join("coordinator.log");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let (server, stdout) = spawn_coordinator(
            &exe,
            &self.logs,
            &address,
            &self.token,
            &self.cluster,
            log.into(),
        )?;
        self.server = server;
        match readiness(stdout) {
            Some(url) if url == self.url => {
                eprintln!("the coordinator stopped ({ended}); started it again on {address}");
                Ok(())
            }
            _ => bail!("the coordinator stopped ({ended}) and did not start again on {address}"),
        }
    }

    /// Prints the last lines of every process's log.
    fn show_logs(&self) {
        let mut names = vec!["coordinator".to_string()];
        names.extend((0..self.workers.len()).map(|i| format!("worker-{i}")));
        for name in names {
            let path = self.logs.join(format!("{name}.log"));
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(15)..];
            if !tail.is_empty() {
                eprintln!("--- last lines of {name}'s log:");
                for line in tail {
                    eprintln!("{line}");
                }
            }
        }
    }

    /// Stops the workers, then the coordinator: SIGTERM, then SIGKILL
    /// after 5 s.
    fn stop(&mut self) {
        let mut all: Vec<&mut Child> = self.workers.iter_mut().collect();
        terminate(&mut all);
        terminate(&mut [&mut self.server]);
    }
}

impl Drop for EmbeddedFleet {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `serve` on `listen` with its state in `dir` and stderr into
/// `log`; returns it and its stdout, where the readiness line comes.
fn spawn_coordinator(
    exe: &Path,
    dir: &Path,
    listen: &str,
    token: &str,
    cluster: &str,
    log: Stdio,
) -> anyhow::Result<(Child, std::process::ChildStdout)> {
    let mut server = Command::new(exe)
        .args(["serve", "--listen", listen, "--grace", "5", "--state"])
        .arg(dir.join("state.db"))
        .env("LORAFLEET_TOKEN", token)
        .env(CLUSTER_TOKEN_ENV, cluster)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .context("cannot start the coordinator")?;
    let stdout = server.stdout.take().expect("piped");
    Ok((server, stdout))
}

/// The URL of `serve`'s readiness line, once it comes (`None` if it
/// exits first).
fn readiness(stdout: std::process::ChildStdout) -> Option<String> {
    BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find_map(|line| line.strip_prefix("listening on ").map(str::to_string))
}

fn terminate(children: &mut [&mut Child]) {
    for child in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            // SAFETY: kill(2) on a child we started and have not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    for child in children.iter_mut() {
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn list(counts: &[u32]) -> String {
    let items: Vec<String> = counts.iter().map(u32::to_string).collect();
    items.join(" or ")
}
