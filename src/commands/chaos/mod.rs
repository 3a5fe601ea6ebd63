//! `lorafleet chaos --runs N`: fault injection that shows fleet jobs
//! survive dead, frozen and cut-off workers. It starts its own coordinator
//! and workers on 127.0.0.1 in a scratch folder (with `--hosts`, each on a
//! host of its own in a network lab, checkpoints on an S3 server there),
//! runs one undisturbed job, then N jobs of the same spec while workers
//! are killed (SIGKILL, respawned a moment later), frozen (SIGSTOP past
//! the detection bound, then SIGCONT) or, on the lab, partitioned (cut
//! from every other host for less or more than the bound), and checks that each job succeeded, that its adapter matches
//! the undisturbed one (deviation ≤ 1e-4), and that its faults cost no
//! more time than they should. Exit 0 only then; otherwise an error naming
//! each job and what went wrong, with the logs and state kept.
//!
//! This module holds the job spec the run submits and the order of
//! things (its flags are `cli::ChaosArgs`); the parts are in `cluster` (the processes and the
//! signals), `hosts` (the network lab), `plan` (which faults, when), `drive` (one job under its
//! faults), `adapter` (comparing adapters) and `verdict` (allowances, the
//! report, the exit status).

mod adapter;
mod cluster;
mod drive;
mod hosts;
mod plan;
mod verdict;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use coordinator::client::Connection;
use job::JobSpec;
use job::spec::{PathOrUrl, TrainingLength, Workers};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::UsageError;
use super::download::download_checkpoint;
use super::fleet::stop_signal;
use super::run::Interrupted;
use crate::cli::{ChaosArgs, FaultKindArg, RemoteArgs};
use crate::connection::{block_on, connect};
use adapter::{AdapterTensors, deviation};
use cluster::{ChaosCluster, ClusterOptions};
use drive::{JobRun, SpecFile, run_job, wait_for_fleet};
use plan::FaultPlan;
use verdict::{Baseline, ChaosReport, JobReport};

/// Ranks of every chaos job: two, so a fleet of three keeps a spare.
const RANKS: u32 = 2;
/// `checkpoint.every_steps` of every chaos job.
const CHECKPOINT_EVERY: u64 = 5;
/// How long workers may take to join, or to be idle again after a job.
const FLEET_WAIT: Duration = Duration::from_secs(30);
/// The longest the undisturbed job may run.
const UNDISTURBED_LIMIT: Duration = Duration::from_secs(30 * 60);

pub fn run(args: ChaosArgs) -> anyhow::Result<()> {
    check(&args)?;
    let source = JobSpec::from_file(&args.spec)?;
    let (scratch, folder) = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            (None, std::path::absolute(dir)?)
        }
        None => {
            let scratch = tempfile::Builder::new()
                .prefix("lorafleet-chaos-")
                .tempdir()
                .context("cannot create a temporary folder")?;
            let path = scratch.path().to_path_buf();
            (Some(scratch), path)
        }
    };
    let options = ClusterOptions {
        workers: args.workers as usize,
        detection_bound: args.detection_bound,
        restart_backoff: args.restart_backoff,
        ring_timeout: (8.0 * args.detection_bound).max(30.0),
        hosts: args.hosts,
    };
    let mut cluster = match ChaosCluster::start(&folder, options) {
        Ok(cluster) => cluster,
        Err(e) => {
            scratch.map(tempfile::TempDir::keep);
            return Err(e.context(format!("logs are in {}", folder.display())));
        }
    };
    eprintln!(
        "chaos: coordinator at {}, {} workers; logs and state in {}",
        cluster.url,
        args.workers,
        folder.display()
    );
    let outcome = block_on(async {
        tokio::select! {
            outcome = chaos(&args, &source, &folder, &mut cluster) => outcome,
            () = stop_signal() => Err(Interrupted.into()),
        }
    });
    let interrupted = outcome.as_ref().is_err_and(|e| e.is::<Interrupted>());
    if outcome.is_err() && !interrupted {
        cluster.show_logs(15);
    }
    cluster.stop();
    let report = match outcome {
        Ok(report) => report,
        Err(e) if interrupted => return Err(e),
        Err(e) => {
            scratch.map(tempfile::TempDir::keep);
            return Err(e.context(format!(
                "the chaos run stopped; logs and state kept in {}",
                folder.display()
            )));
        }
    };
    let summary = report.summary_line();
    if args.json {
        eprintln!("{summary}");
        println!("{}", report.to_json());
    } else {
        println!("{summary}");
    }
    report.verdict().map_err(|e| {
        scratch.map(tempfile::TempDir::keep);
        e.context(format!("logs and state kept in {}", folder.display()))
    })
}

fn check(args: &ChaosArgs) -> anyhow::Result<()> {
    let usage = |text: String| Err(UsageError(text).into());
    if args.runs == 0 {
        return usage("--runs must be at least 1".into());
    }
    if !(RANKS..=16).contains(&args.workers) {
        return usage(format!(
            "--workers {}: a chaos fleet has {RANKS} to 16 workers (each job runs {RANKS} ranks)",
            args.workers
        ));
    }
    if !(args.detection_bound >= 1.0 && args.detection_bound <= 600.0) {
        return usage(format!(
            "--detection-bound {}: give 1 to 600 seconds",
            args.detection_bound
        ));
    }
    if !(args.restart_backoff > 0.0 && args.restart_backoff <= 60.0) {
        return usage(format!(
            "--restart-backoff {}: give more than 0 and at most 60 seconds",
            args.restart_backoff
        ));
    }
    if args.faults.contains(&FaultKindArg::Partition) && !args.hosts {
        return usage("--faults partition needs --hosts (a network lab to cut)".into());
    }
    if args.steps < CHECKPOINT_EVERY {
        return usage(format!(
            "--steps {}: at least {CHECKPOINT_EVERY}, one checkpoint's worth",
            args.steps
        ));
    }
    Ok(())
}

/// The undisturbed job, then the disturbed ones; their report.
async fn chaos(
    args: &ChaosArgs,
    source: &JobSpec,
    folder: &Path,
    cluster: &mut ChaosCluster,
) -> anyhow::Result<ChaosReport> {
    let conn = connect(&RemoteArgs::new(&cluster.url, &cluster.token)).await?;
    let mut notes = Vec::new();
    wait_for_fleet(&conn, cluster, FLEET_WAIT, &mut notes).await?;

    let name = format!("chaos-{}-undisturbed", args.seed);
    let storage = cluster.checkpoint_url();
    let spec = write_spec(source, args, folder, storage.as_deref(), &name)?;
    let undisturbed = run_job(&conn, cluster, &spec, &FaultPlan::none(), UNDISTURBED_LIMIT).await?;
    if !undisturbed.ending.succeeded() {
        bail!(
            "the undisturbed job {} ({}) ended {}: {}",
            undisturbed.name,
            undisturbed.id,
            undisturbed.ending,
            undisturbed.error.as_deref().unwrap_or("no error given")
        );
    }
    let reference = fetch_adapter(&conn, &undisturbed, folder, args.steps)
        .await
        .context("the undisturbed job's adapter")?;
    let baseline = Baseline {
        wall_s: undisturbed.wall_s,
        startup_s: undisturbed.startup_s.unwrap_or(0.0),
        mean_step_s: undisturbed
            .mean_step_s
            .unwrap_or(undisturbed.wall_s / args.steps as f64),
        every_steps: CHECKPOINT_EVERY,
        detection_bound_s: args.detection_bound,
        restart_backoff_s: args.restart_backoff,
    };
    wait_for_fleet(&conn, cluster, FLEET_WAIT, &mut notes).await?;

    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let kinds = fault_kinds(args);
    let expected = Duration::from_secs_f64(baseline.wall_s);
    let bound = Duration::from_secs_f64(args.detection_bound);
    let mut jobs = Vec::new();
    for i in 1..=args.runs {
        let plan = FaultPlan::draw(&mut rng, args.faults_per_job, expected, bound, &kinds);
        let name = format!("chaos-{}-{i}", args.seed);
        let spec = write_spec(source, args, folder, storage.as_deref(), &name)?;
        let limit = expected * 3 + Duration::from_secs(60) * args.faults_per_job;
        let mut run = run_job(&conn, cluster, &spec, &plan, limit).await?;
        let deviation = if run.ending.succeeded() {
            match fetch_adapter(&conn, &run, folder, args.steps).await {
                Ok(adapter) => deviation(&adapter, &reference).map_err(|e| format!("{e:#}")),
                Err(e) => Err(format!("{e:#}")),
            }
        } else {
            Err("the job did not succeed".to_string())
        };
        wait_for_fleet(&conn, cluster, FLEET_WAIT, &mut run.anomalies).await?;
        let report = JobReport::new(run, &baseline, deviation);
        if args.json {
            eprintln!("{}", report.line());
        } else {
            println!("{}", report.line());
        }
        jobs.push(report);
    }
    Ok(ChaosReport {
        seed: args.seed,
        baseline,
        jobs,
    })
}

/// The chaos job spec named `name`, made from `source`: 2 ranks of one
/// thread, `--steps` steps, a checkpoint every 5 steps in `storage` (else
/// `folder/checkpoints`),
/// restarts enough for the faults, no periodic evaluation. Written to
/// `folder/specs/NAME.yaml` (its paths are absolute) and read back from there.
fn write_spec(
    source: &JobSpec,
    args: &ChaosArgs,
    folder: &Path,
    storage: Option<&str>,
    name: &str,
) -> anyhow::Result<SpecFile> {
    let mut spec = source.clone();
    spec.name = name.to_string();
    spec.resources.workers = Workers::fixed(RANKS);
    spec.resources.threads_per_worker = 1;
    spec.training.length = TrainingLength::MaxSteps(args.steps);
    spec.training.eval_every = 0;
    spec.checkpoint.every_steps = CHECKPOINT_EVERY;
    spec.checkpoint.keep_last = 2;
    spec.checkpoint.keep_best = false;
    spec.checkpoint.storage = match storage {
        Some(url) => PathOrUrl::Url(url.to_string()),
        None => PathOrUrl::Path(folder.join("checkpoints")),
    };
    spec.checkpoint.max_failures = args.faults_per_job + 3;
    spec.output.dir = Some(PathOrUrl::Path(folder.join("output").join(name)));
    if !spec.usable_worker_counts().contains(&RANKS) {
        bail!(UsageError(format!(
            "{}: training.global_batch_size {} does not split over {RANKS} workers of micro_batch_size {}",
            args.spec.display(),
            spec.training.global_batch_size,
            spec.training.micro_batch_size
        )));
    }
    let specs = folder.join("specs");
    std::fs::create_dir_all(&specs)
        .with_context(|| format!("cannot create {}", specs.display()))?;
    let path = specs.join(format!("{name}.yaml"));
    std::fs::write(&path, spec.to_yaml())
        .with_context(|| format!("cannot write {}", path.display()))?;
    // What is submitted must read back as written.
    let spec = JobSpec::from_file(&path)?;
    Ok(SpecFile { path, spec })
}

/// The fault kinds to draw: `--faults`, else kill and freeze (and
/// partition with `--hosts`).
fn fault_kinds(args: &ChaosArgs) -> Vec<FaultKindArg> {
    if !args.faults.is_empty() {
        let mut kinds = args.faults.clone();
        kinds.dedup();
        return kinds;
    }
    let mut kinds = vec![FaultKindArg::Kill, FaultKindArg::Freeze];
    if args.hosts {
        kinds.push(FaultKindArg::Partition);
    }
    kinds
}

/// Downloads `run`'s latest checkpoint to `folder/adapters/NAME` and reads
/// its adapter; it must be the last step's.
async fn fetch_adapter(
    conn: &Connection,
    run: &JobRun,
    folder: &Path,
    steps: u64,
) -> anyhow::Result<AdapterTensors> {
    let dir = folder.join("adapters").join(&run.name);
    let summary = download_checkpoint(conn, &run.id, "latest", &dir).await?;
    if summary.step != steps {
        bail!(
            "job {}'s latest checkpoint is step {}, not the last step {steps}",
            run.id,
            summary.step
        );
    }
    AdapterTensors::read(&dir)
}
