//! `lorafleet train FILE`: run a job spec's whole fine-tune in this process,
//! alone or as one rank of a data-parallel job (`--rank/--world/--peers`).
//!
//! Every rank loads the same spec and data and trains on its share of each
//! global batch; rank 0 shows progress and writes the results. The adapter,
//! optimizer state and metrics are saved to the output folder
//! every `checkpoint.every_steps` steps and at the end (written to a
//! temporary folder, then swapped in, so the folder always holds one whole
//! state); `--resume` continues from it.

use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use coordinator::JobSpec;
use trainer::lora::{LoraWeights, peft};
use trainer::train::data_parallel::{agree, checksum, fingerprint};
use trainer::train::{SampledSteps, Silent, TrainObserver, TrainState};

use super::local_job::LocalJob;
use crate::cli::TrainArgs;
use crate::progress::{TrainEvents, TrainProgress};

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let spec = JobSpec::from_file(&args.file)?;
    // Before any work: tokenization and tensors share this pool.
    trainer::device::set_cpu_threads(spec.resources.threads_per_worker as usize);
    let started = Instant::now();
    let ring = super::ranks::plan(&args.ring)?;
    let job = LocalJob::load(spec)?;
    let device = trainer::device::default_device().autodiff();
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
    let mut collective = super::ranks::join(ring)?;
    let (rank, world) = (collective.rank(), collective.world());
    // Ranks must run the same job on the same data.
    let job = format!("{}\n{} samples", spec.to_yaml(), data.train.len());
    agree(
        &mut *collective,
        fingerprint(job.as_bytes()),
        "the job spec and its dataset",
    )?;
    let (mut model, tokenizer) = source.into_model(&device)?;
    let tokenizer = tokenizer.expect("LocalJob checks the tokenizer");

    let saved = output_dir.join("trainer_state.json");
    let mut state = if args.resume && saved.exists() {
        let state = TrainState::load(&output_dir, &model.config)
            .with_context(|| format!("cannot resume from {}", output_dir.display()))?;
        eprintln!("resuming {} from step {}", spec.name, state.step);
        state
    } else if let Some(init) = &spec.lora.init_adapter {
        let path = init
            .as_path()
            .context("lora.init_adapter: only local folders for now")?;
        let weights = peft::load(path, &model.config)
            .with_context(|| format!("cannot load lora.init_adapter {}", path.display()))?;
        TrainState::new(weights)
    } else {
        TrainState::new(LoraWeights::init(&lora, &model.config, train.seed))
    };
    if state.lora.config != lora && !args.resume {
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
            "training {}: {} samples ({} steps per epoch), {} steps, {} LoRA values, {} rank(s) x {} threads",
            spec.name,
            data.train.len(),
            sampler.steps_per_epoch(),
            train.max_steps,
            state.lora.num_parameters(),
            world,
            trainer::device::cpu_threads()
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
    let observer: &mut dyn TrainObserver = match (rank, args.events) {
        (0, true) => &mut events,
        (0, false) => &mut progress,
        _ => &mut silent,
    };
    if args.events && rank == 0 {
        TrainEvents::emit(
            "train.started",
            serde_json::json!({"step": state.step, "total_steps": train.max_steps, "world": world}),
        );
    }
    let every = (spec.checkpoint.every_steps as usize).max(1);
    let end = args
        .stop_after
        .map_or(train.max_steps, |s| s.min(train.max_steps));
    while state.step < end {
        let next = ((state.step / every + 1) * every).min(end);
        trainer::train::run(
            &mut model,
            &device,
            &train,
            &steps,
            &mut *collective,
            &mut state,
            observer,
            Some(next),
        )?;
        if rank == 0 {
            save(&output_dir, &state, &spec, &base_model)?;
            if args.events {
                let metrics = serde_json::json!({
                    "train_loss": state.log.last().map(|m| m.loss),
                    "eval_loss": state.evals.last().map(|e| e.eval_loss),
                });
                TrainEvents::emit(
                    "checkpoint.saved",
                    serde_json::json!({
                        "step": state.step,
                        "path": output_dir.display().to_string(),
                        "metrics": metrics,
                    }),
                );
            }
        }
    }
    progress.finish();
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
        "output_dir": output_dir.display().to_string(),
        "world": world,
    });
    std::fs::write(
        output_dir.join("final_metrics.json"),
        serde_json::to_string_pretty(&summary)?,
    )
    .with_context(|| format!("cannot write {}", output_dir.display()))?;
    if args.events {
        TrainEvents::emit("train.finished", summary);
    } else if args.json {
        println!("{summary}");
    } else {
        println!(
            "done: {} steps, train loss {:.4}, validation loss {} → {}; adapter in {}",
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

/// Writes the state, its metrics and the spec next to `dir`, then swaps the
/// new folder in, so `dir` never holds half a state.
fn save(dir: &Path, state: &TrainState, spec: &JobSpec, base_model: &str) -> anyhow::Result<()> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("final");
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    state.save(&tmp, base_model)?;
    let mut lines = String::new();
    for m in &state.log {
        lines.push_str(&serde_json::to_string(m)?);
        lines.push('\n');
    }
    std::fs::write(tmp.join("metrics.jsonl"), lines)?;
    std::fs::write(tmp.join("job.yaml"), spec.to_yaml())?;
    if dir.exists() {
        std::fs::rename(dir, &old).with_context(|| format!("cannot replace {}", dir.display()))?;
    }
    std::fs::rename(&tmp, dir).with_context(|| format!("cannot write {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}
