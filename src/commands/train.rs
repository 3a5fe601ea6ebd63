//! `lorafleet train FILE`: run a job spec's whole fine-tune in this process,
//! alone or as one rank of a data-parallel job (`--rank/--world/--peers`).
//!
//! Every rank loads the same spec and data and trains on its share of each
//! global batch; rank 0 shows progress and writes the results. A checkpoint
//! is committed to `checkpoint.storage` every `checkpoint.every_steps`
//! steps and at the end, in the background (`checkpointing`); `--resume`
//! continues from the newest one that verifies. At the end the final state
//! and its metrics are also written to `output.dir`: to a hidden staging
//! folder inside it, then each file moved in with one rename, so every
//! file there is whole and the user's other files stay
//! (`output_folder::Staging`).

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use job::JobSpec;
use trainer::lora::LoraWeights;
use trainer::train::data_parallel::{agree, checksum, fingerprint};
use trainer::train::{RunEnd, SampledSteps, Silent, TrainObserver, TrainState};

use super::UsageError;
use super::checkpointing::{LOCAL_TENANT, RunCheckpoints, next_checkpoint, write_state};
use super::init_adapter;
use super::local_job::LocalJob;
use super::preemption::{self, StopOnSignal};
use crate::cli::TrainArgs;
use crate::progress::{TrainEvents, TrainProgress};

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
    let peer = unreachable_peer(error);
    let mut fields = serde_json::json!({ "error": format!("{error:#}") });
    if let Some(peer) = peer {
        fields["ring_peer"] = peer.into();
    }
    TrainEvents::emit_at("error", "train.failed", &format!("{error:#}"), fields);
}

/// The ring peer `error` says this rank could not reach (no connection,
/// or no answer in time), if that is what it says.
fn unreachable_peer(error: &anyhow::Error) -> Option<usize> {
    use trainer::collective::CollectiveError as E;
    use trainer::train::data_parallel::TrainError;
    error.chain().find_map(|cause| {
        let collective = cause
            .downcast_ref::<E>()
            .or_else(|| match cause.downcast_ref() {
                Some(TrainError::Collective(e)) => Some(e),
                _ => None,
            })?;
        match collective {
            E::Connect { peer, .. } | E::NoPeer { peer, .. } | E::Timeout { peer, .. } => {
                Some(*peer)
            }
            _ => None,
        }
    })
}

/// What every rank of a job must agree on: the spec, with local input
/// paths cut to their file names (each worker keeps its fetched inputs in
/// a folder of its own; the names are content hashes), and the tokens of
/// the training data.
fn job_fingerprint(spec: &JobSpec, train: &trainer::data::TokenizedDataset) -> u64 {
    use job::spec::{ModelSpec, PathOrUrl, Validation};
    let name_only = |place: &mut PathOrUrl| {
        if let PathOrUrl::Path(path) = place
            && let Some(name) = path.file_name()
        {
            *path = name.into();
        }
    };
    let mut spec = spec.clone();
    name_only(&mut spec.dataset.train);
    if let Some(Validation::Data(v)) = &mut spec.dataset.validation {
        name_only(v);
    }
    if let ModelSpec::Path(p) = &mut spec.model {
        name_only(p);
    }
    let mut text = spec.to_yaml().into_bytes();
    for sample in train.samples() {
        text.extend(sample.input_ids.iter().flat_map(|id| id.to_le_bytes()));
        text.push(b'\n');
    }
    fingerprint(&text)
}

fn train(args: TrainArgs) -> anyhow::Result<()> {
    preemption::listen_for_sigterm();
    let spec = JobSpec::from_file(&args.file)?;
    // Before any work: tokenization and tensors share this pool.
    trainer::device::set_cpu_threads(spec.resources.threads_per_worker as usize);
    let started = Instant::now();
    let ring = super::ranks::plan(&args.ring)?;
    let backend = super::local_job::compute_backend(&spec)?;
    let device = trainer::device::device_for(backend)
        .map_err(|e| UsageError(e.to_string()))?
        .autodiff();
    let job = LocalJob::load(spec)?;
    let LocalJob {
        spec,
        source,
        data,
        sampler,
        lora,
        train,
        output_dir,
        base_model,
    } = job;
    // The writer of the results finds out before training, not after,
    // that its output folder is a file.
    if !args.no_output && args.ring.rank.is_none_or(|rank| rank == 0) {
        super::output_folder::check(&output_dir)?;
    }
    let mut collective = super::ranks::join_on(ring, backend)?;
    let (rank, world) = (collective.rank(), collective.world());
    // Ranks must run the same job on the same data.
    agree(
        &mut *collective,
        job_fingerprint(&spec, &data.train),
        "the job spec and its dataset",
    )?;
    let (mut model, tokenizer) = source.into_model(&device)?;
    let tokenizer = tokenizer.expect("LocalJob checks the tokenizer");

    let tenant = args.tenant.as_deref().unwrap_or(LOCAL_TENANT);
    let job_id = args.job_id.as_deref().unwrap_or(&spec.name);
    check_path_part("--tenant", tenant)?;
    check_path_part("--job-id", job_id)?;
    let mut checkpoints = RunCheckpoints::open(
        &spec,
        tenant,
        job_id,
        rank,
        args.resume,
        args.events,
        &base_model,
        &args
            .attempt
            .map(|a| format!("job {job_id} attempt {a}"))
            .unwrap_or_default(),
    )?;
    let restored = if args.resume {
        checkpoints.restore(&model.config)?
    } else {
        None
    };
    let mut state = if let Some(state) = restored {
        eprintln!("resuming {} from step {}", spec.name, state.step);
        state
    } else if let Some(init) = &spec.lora.init_adapter {
        let weights = init_adapter::load(init, &model.config)?;
        TrainState::new(weights)
    } else {
        TrainState::new(LoraWeights::init(&lora, &model.config, train.seed))
    };
    if state.lora.config != lora && state.step == 0 {
        anyhow::bail!(
            "lora.init_adapter has r={} alpha={} targets {:?}, but the spec asks for r={} alpha={} targets {:?}",
            state.lora.config.r,
            state.lora.config.alpha,
            state.lora.config.target_modules,
            lora.r,
            lora.alpha,
            lora.target_modules
        );
    }

    let what = format!("the starting state (step {})", state.step);
    agree(&mut *collective, checksum(&state.lora.to_flat()), &what)?;
    if rank == 0 {
        eprintln!(
            "training {}: {} samples ({} steps per epoch), {} steps, {} LoRA values, {} rank(s) x {}",
            spec.name,
            data.train.len(),
            sampler.steps_per_epoch(),
            train.max_steps,
            state.lora.num_parameters(),
            world,
            match backend {
                trainer::device::ComputeBackend::Cpu =>
                    format!("{} threads", trainer::device::cpu_threads()),
                gpu => format!("1 {} GPU", gpu.name()),
            }
        );
    }
    let steps = SampledSteps {
        train: &data.train,
        validation: data.validation.as_ref(),
        sampler,
        micro_batch_size: spec.training.micro_batch_size as usize,
        pad_id: trainer::data::pad_id(&tokenizer),
        rank,
        world,
    };
    let mut progress = TrainProgress::new(train.max_steps, state.step);
    if args.events {
        progress.finish();
    }
    let mut events = TrainEvents;
    let mut silent = Silent;
    let inner: &mut dyn TrainObserver = match (rank, args.events) {
        (0, true) => &mut events,
        (0, false) => &mut progress,
        _ => &mut silent,
    };
    let mut observer = StopOnSignal(inner);
    if args.events && rank == 0 {
        TrainEvents::emit(
            "train.started",
            serde_json::json!({"step": state.step, "total_steps": train.max_steps, "world": world}),
        );
    }
    let every = spec.checkpoint.every_steps as usize;
    let end = args
        .stop_after
        .map_or(train.max_steps, |s| s.min(train.max_steps));
    let mut preempted = false;
    while state.step < end {
        let next = next_checkpoint(state.step, every, end);
        let ended = trainer::train::run(
            &mut model,
            &device,
            &train,
            &steps,
            &mut *collective,
            &mut state,
            &mut observer,
            Some(next),
        )?;
        checkpoints.save(&state)?;
        if ended == RunEnd::Stopped && state.step < end {
            preempted = true;
            break;
        }
    }
    let location = checkpoints.location();
    let blocking_s = checkpoints.finish()?;
    progress.finish();
    if preempted {
        // Every rank leaves only once rank 0's checkpoint is committed.
        collective.barrier()?;
        if rank == 0 && args.events {
            TrainEvents::emit(
                "train.preempted",
                serde_json::json!({"step": state.step, "checkpoints": location}),
            );
        }
        return Err(Preempted { step: state.step }.into());
    }
    if rank != 0 {
        eprintln!("rank {rank} of {world}: done after {} steps", state.step);
        return Ok(());
    }

    let summary = serde_json::json!({
        "name": spec.name,
        "steps": state.step,
        "train_loss": state.log.last().map(|m| m.loss),
        "eval_loss_initial": state.evals.first().map(|e| e.eval_loss),
        "eval_loss_final": state.evals.last().map(|e| e.eval_loss),
        "trained_tokens": state.log.iter().map(|m| m.target_tokens).sum::<usize>(),
        "elapsed_s": started.elapsed().as_secs_f64(),
        "output_dir": (!args.no_output).then(|| output_dir.display().to_string()),
        "checkpoints": location,
        "checkpoint_blocking_s": blocking_s,
        "world": world,
    });
    if !args.no_output {
        save(&output_dir, &state, &spec, &base_model, &summary)?;
    }
    if args.events {
        TrainEvents::emit("train.finished", summary);
    } else if args.json {
        println!("{summary}");
    } else {
        println!(
            "done: {} steps, train loss {:.4}, validation loss {} → {}; adapter in {} (checkpoints in {location})",
            state.step,
            summary["train_loss"].as_f64().unwrap_or(f64::NAN),
            fmt_loss(&summary["eval_loss_initial"]),
            fmt_loss(&summary["eval_loss_final"]),
            output_dir.display()
        );
    }
    Ok(())
}

fn fmt_loss(v: &serde_json::Value) -> String {
    v.as_f64().map_or("n/a".into(), |x| format!("{x:.4}"))
}

/// Writes the state, its metrics, the spec and the run's summary
/// (`final_metrics.json`) in a staging folder inside `dir`, then moves
/// each file into `dir`, replacing only files of the same name: every file
/// is whole, and the user's other files there stay
/// (`output_folder::Staging`).
fn save(
    dir: &Path,
    state: &TrainState,
    spec: &JobSpec,
    base_model: &str,
    summary: &serde_json::Value,
) -> anyhow::Result<()> {
    let staging = super::output_folder::Staging::new(dir)?;
    write_state(staging.path(), state, &spec.to_yaml(), base_model)?;
    std::fs::write(
        staging.path().join("final_metrics.json"),
        serde_json::to_string_pretty(summary)?,
    )
    .with_context(|| format!("cannot write {}", dir.display()))?;
    staging.install()?;
    Ok(())
}

/// A tenant or job id is one folder name in checkpoint storage.
fn check_path_part(flag: &str, value: &str) -> anyhow::Result<()> {
    let ok = !value.is_empty()
        && value != "."
        && value != ".."
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        anyhow::bail!(UsageError(format!(
            "{flag} {value:?}: use letters, digits, '.', '_' and '-' only"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainer::collective::CollectiveError;
    use trainer::train::data_parallel::TrainError;

    #[test]
    fn a_peer_that_never_answered_is_named_however_the_error_is_wrapped() {
        let timeout = || CollectiveError::Timeout {
            rank: 0,
            peer: 1,
            call: "all_reduce_sum".into(),
            seq: 3,
            secs: 5.0,
        };
        let wrapped = anyhow::Error::from(TrainError::Collective(timeout())).context("training");
        assert_eq!(unreachable_peer(&wrapped), Some(1));
        assert_eq!(unreachable_peer(&anyhow::Error::from(timeout())), Some(1));
        let aborted = CollectiveError::Aborted {
            rank: 0,
            message: "rank 1 failed".into(),
        };
        assert_eq!(unreachable_peer(&anyhow::Error::from(aborted)), None);
        assert_eq!(unreachable_peer(&anyhow::anyhow!("disk full")), None);
    }
}
