//! `lorafleet train FILE`: run a job spec's whole fine-tune in this process,
//! alone or as one rank of a data-parallel job (`--rank/--world/--peers`).
//!
//! The recipe is the library's ([`job::recipe::JobRun`]); this command
//! parses the flags, picks the device, joins the ring, turns SIGTERM into a
//! stop request (`preemption`), chooses where events go (JSON lines for a
//! worker agent with `--events`, a progress bar otherwise) and, on rank 0,
//! writes the final state and its metrics to `output.dir`: to a hidden
//! staging folder inside it, then each file moved in with one rename, so
//! every file there is whole and the user's other files stay
//! (`output_folder::Staging`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use job::JobEvent;
use job::event::RunSummary;
use job::recipe::{EventSink, FinishedRun, JobInputs, JobRun, RunIdentity, RunOutcome};

use super::UsageError;
use super::preemption;
use crate::cli::TrainArgs;
use crate::progress::{JsonLines, Terminal};

/// `train` stopped early because it was asked to (SIGTERM), after
/// committing a checkpoint of the step it stopped at.
#[derive(Debug, thiserror::Error)]
#[error(
    "stopped at step {step} when asked (SIGTERM); its checkpoint is committed and --resume continues from it"
)]
pub struct Preempted {
    pub step: usize,
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let events = args.events;
    let result = train(args);
    if events && let Err(error) = &result {
        report_failure(error);
    }
    result
}

/// Tells the agent why the run failed, with the ring peer it could not
/// reach when that is the reason (the coordinator then avoids the pair).
fn report_failure(error: &anyhow::Error) {
    let ring_peer = error
        .chain()
        .find_map(|cause| cause.downcast_ref::<job::recipe::RecipeError>())
        .and_then(|e| e.unreachable_peer());
    JsonLines.emit(JobEvent::TrainFailed {
        error: format!("{error:#}"),
        ring_peer,
    });
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    preemption::listen_for_sigterm();
    let spec = job::JobSpec::from_file_with_overrides(&args.file, &args.overrides)?.spec;
    // Before any work: tokenization and tensors share this pool.
    trainer::device::set_cpu_threads(spec.resources.threads_per_worker as usize);
    let ring = crate::ring::plan(&args.ring)?;
    let backend = job::recipe::compute_backend(&spec)?;
    let device = trainer::device::device_for(backend)
        .map_err(|e| UsageError(e.to_string()))?
        .autodiff();
    let identity = RunIdentity::new(
        &spec,
        args.tenant.as_deref(),
        args.job_id.as_deref(),
        args.attempt,
        args.resume,
    )?;
    let inputs = JobInputs::load(spec)?;
    // The writer of the results finds out before training, not after,
    // that its output folder is a file.
    if !args.no_output && args.ring.rank.is_none_or(|rank| rank == 0) {
        super::output_folder::check(&inputs.plan.output_dir)?;
    }
    let collective = crate::ring::join_on(ring, backend)?;
    let rank = collective.rank();
    let terminal = Arc::new(Terminal::new(rank == 0 && !args.events));
    let sink: Arc<dyn EventSink> = if args.events {
        Arc::new(JsonLines)
    } else {
        terminal.clone()
    };
    let mut run = JobRun::start(inputs, collective, &device, &identity, sink.clone())?;
    let world = run.world();
    if rank == 0 {
        eprintln!(
            "training {}: {} samples ({} steps per epoch), {} steps, {} LoRA values, {} rank(s) x {}",
            run.spec.name,
            run.plan.data.train.len(),
            run.plan.sampler.steps_per_epoch(),
            run.plan.train.max_steps,
            run.state.lora.num_parameters(),
            world,
            match backend {
                trainer::device::ComputeBackend::Cpu =>
                    format!("{} threads", trainer::device::cpu_threads()),
                gpu => format!("1 {} GPU", gpu.name()),
            }
        );
    }
    let outcome = run.train(&device, args.stop_after, &preemption::requested)?;
    let finished = run.finish(outcome);
    terminal.finish();
    let mut finished = finished?;
    if let RunOutcome::Preempted { step } = outcome {
        return Err(Preempted { step }.into());
    }
    if rank != 0 {
        eprintln!(
            "rank {rank} of {world}: done after {} steps",
            finished.state.step
        );
        return Ok(());
    }
    if !args.no_output {
        finished.summary.output_dir = Some(finished.output_dir.display().to_string());
        save(&finished)?;
    }
    let summary = &finished.summary;
    if args.events {
        sink.emit(JobEvent::TrainFinished(summary.clone()));
    } else if args.json {
        println!("{}", serde_json::to_string(summary)?);
    } else {
        println!(
            "done: {} steps, train loss {:.4}, validation loss {} → {}; adapter in {} (checkpoints in {})",
            summary.steps,
            summary.train_loss.unwrap_or(f64::NAN),
            fmt_loss(summary.eval_loss_initial),
            fmt_loss(summary.eval_loss_final),
            finished.output_dir.display(),
            summary.checkpoints,
        );
    }
    Ok(())
}

/// How a worker agent starts a rank: this program's `train --events`,
/// which keeps the contract of `coordinator::agent::RankLauncher`.
#[derive(Debug)]
pub struct TrainLauncher {
    /// This program.
    pub program: PathBuf,
    /// The ring's timeout, seconds (`--ring-timeout`).
    pub ring_timeout: f64,
}

impl coordinator::agent::RankLauncher for TrainLauncher {
    fn command(&self, r: &coordinator::agent::RankLaunch<'_>) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .arg("train")
            .arg(r.spec_file)
            .arg("--events")
            .arg("--no-output")
            .arg("--job-id")
            .arg(r.job_id)
            .arg("--tenant")
            .arg(r.tenant)
            .arg("--attempt")
            .arg(r.attempt.to_string());
        if r.world > 1 {
            command
                .arg("--rank")
                .arg(r.rank.to_string())
                .arg("--world")
                .arg(r.world.to_string())
                .arg("--peers")
                .arg(r.peers.join(","));
        }
        if r.resume {
            command.arg("--resume");
        }
        command
            .arg("--ring-timeout")
            .arg(self.ring_timeout.to_string());
        command
    }

    fn describe(&self) -> String {
        self.program.display().to_string()
    }
}

fn fmt_loss(v: Option<f64>) -> String {
    v.map_or("n/a".into(), |x| format!("{x:.4}"))
}

/// Writes the state, its metrics, the spec and the run's summary
/// (`final_metrics.json`) in a staging folder inside `output_dir`, then
/// moves each file in, replacing only files of the same name: every file
/// is whole, and the user's other files there stay
/// (`output_folder::Staging`).
fn save(run: &FinishedRun) -> anyhow::Result<()> {
    let dir: &Path = &run.output_dir;
    let staging = super::output_folder::Staging::new(dir)?;
    job::recipe::write_state(
        staging.path(),
        &run.state,
        &run.spec.to_yaml(),
        &run.base_model,
    )?;
    write_summary(staging.path(), &run.summary)
        .with_context(|| format!("cannot write {}", dir.display()))?;
    staging.install()?;
    Ok(())
}

fn write_summary(dir: &Path, summary: &RunSummary) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("final_metrics.json"),
        serde_json::to_string_pretty(summary)?,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use coordinator::agent::{RankLaunch, RankLauncher};

    fn args(launch: &RankLaunch<'_>) -> Vec<String> {
        let launcher = TrainLauncher {
            program: "/bin/lorafleet".into(),
            ring_timeout: 30.0,
        };
        let command = launcher.command(launch);
        assert_eq!(command.as_std().get_program(), "/bin/lorafleet");
        command
            .as_std()
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn a_rank_is_this_programs_train_with_events_its_place_in_the_ring_and_no_output() {
        let peers = vec!["10.0.0.1:7000".to_string(), "10.0.0.2:7000".to_string()];
        let launch = RankLaunch {
            spec_file: Path::new("/w/j-2-rank1.yaml"),
            job_id: "j",
            tenant: "acme",
            attempt: 2,
            rank: 1,
            world: 2,
            peers: &peers,
            resume: true,
        };
        let got = args(&launch);
        let want = "train /w/j-2-rank1.yaml --events --no-output --job-id j --tenant acme --attempt 2 \
                    --rank 1 --world 2 --peers 10.0.0.1:7000,10.0.0.2:7000 --resume --ring-timeout 30";
        assert_eq!(got.join(" "), want);
        // The flags parse as `train`'s own.
        use clap::Parser as _;
        let cli =
            crate::cli::Cli::try_parse_from(std::iter::once("lorafleet".to_string()).chain(got));
        assert!(cli.is_ok(), "{:?}", cli.err());

        // A single rank joins no ring; a first attempt resumes nothing.
        let alone = args(&RankLaunch {
            world: 1,
            rank: 0,
            attempt: 1,
            resume: false,
            peers: &peers[..1],
            ..launch
        });
        assert!(
            !alone.iter().any(|a| a == "--rank" || a == "--resume"),
            "{alone:?}"
        );
    }
}
