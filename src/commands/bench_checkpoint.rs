//! `lorafleet bench checkpoint`: what checkpointing costs a run.
//!
//! Two figures, each taken in one process as a ratio against a baseline
//! measured in the same run (this machine's speed drifts between
//! processes), alternating the order of the two variants across rounds and
//! reporting medians:
//!
//! - **step overhead**: the quickstart job (tiny preset) trained for N
//!   steps without checkpoints and with one every K steps (and at the
//!   end, as `train` does) through [`RunCheckpoints`](job::recipe::RunCheckpoints), which commits in the
//!   background. Wall time per step, from the first step until the last
//!   upload is done; validation is left out so that only training steps are
//!   timed. Target: under 5% more time per step. Also reported: the median
//!   of each round's own overhead (its two runs are back to back, so it is
//!   the ratio least moved by the machine's drift) and the time training
//!   stood still for checkpoints (what `RunCheckpoints::finish` returns,
//!   the final wait for the last upload included).
//! - **upload**: [`CheckpointStore::commit`] of a folder holding one M MiB
//!   file (plus a small JSON file) against a bare object_store multipart put
//!   of the same bytes from memory, with the same part size and concurrency.
//!   Target: at least 0.8 of the bare throughput.
//!
//! Everything goes under `{storage}/bench/`, one unique job id per round,
//! deleted after the round.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, bail};
use job::JobSpec;
use job::spec::PathOrUrl;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use rand::RngCore;
use serde_json::json;
use trainer::checkpoint::store::{PART_BYTES, PART_CONCURRENCY};
use trainer::checkpoint::{CheckpointStore, block_on};
use trainer::lora::LoraWeights;
use trainer::storage::Location;
use trainer::train::{SampledSteps, Silent, TrainState};

use super::UsageError;
use crate::cli::BenchCheckpointArgs;
use job::recipe::{Discard, JobInputs, RunCheckpoints, RunIdentity, RunPlan, next_checkpoint};

/// The tenant every benchmark job goes under.
const TENANT: &str = "bench";
/// The most extra time per step checkpointing may cost, in percent.
const TARGET_OVERHEAD_PCT: f64 = 5.0;
/// The least share of a bare multipart upload's throughput a commit must reach.
const TARGET_RATIO: f64 = 0.8;
/// Untimed steps before the first round (allocations, caches), besides an
/// untimed run up to the first checkpoint.
const WARMUP_STEPS: usize = 3;

pub fn run(args: BenchCheckpointArgs) -> anyhow::Result<()> {
    check_args(&args)?;
    let root = open_storage(&args.storage)?;
    let run_id = format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis())
    );

    let overhead = step_overhead(&args, &run_id)?;
    print_figure(&overhead, args.json);
    let upload = upload(&args, &root, &run_id)?;
    print_figure(&upload, args.json);
    Ok(())
}

fn check_args(args: &BenchCheckpointArgs) -> anyhow::Result<()> {
    for (flag, value) in [
        ("--steps", args.steps),
        ("--every", args.every),
        ("--size-mib", args.size_mib),
        ("--rounds", args.rounds),
    ] {
        if value == 0 {
            bail!(UsageError(format!("{flag} must be at least 1")));
        }
    }
    Ok(())
}

/// Opens `--storage` and proves it takes a write and a delete, so that a
/// wrong URL, endpoint or credential fails here with a clear message.
fn open_storage(storage: &str) -> anyhow::Result<Location> {
    let root = Location::parse(storage)
        .map_err(|e| UsageError(format!("--storage {storage}: {}", e.message)))?;
    let probe = root
        .join(TENANT)
        .join(&format!("probe-{}", std::process::id()));
    block_on(async {
        root.store()
            .put(probe.path(), PutPayload::from_static(b"probe"))
            .await?;
        root.store().delete(probe.path()).await
    })
    .with_context(|| {
        format!(
            "--storage {storage}: cannot write there (check the URL, the endpoint and the credentials, e.g. AWS_ENDPOINT_URL and AWS_ACCESS_KEY_ID)"
        )
    })?;
    Ok(root)
}

/// The spec's `checkpoint.storage` for `--storage`: a URL as given, a
/// local path made absolute (a spec's paths are resolved already).
fn spec_storage(storage: &str) -> anyhow::Result<PathOrUrl> {
    if storage.contains("://") {
        return Ok(PathOrUrl::Url(storage.to_string()));
    }
    let path = std::path::absolute(storage)
        .with_context(|| format!("--storage {storage}: not a usable path"))?;
    Ok(PathOrUrl::Path(path))
}

/// Deletes every checkpoint folder of `job` (retention leaves the last few).
fn delete_job(storage: &str, job: &str) -> anyhow::Result<()> {
    let store = CheckpointStore::open(storage, TENANT, job)?;
    block_on(async {
        for step in store.steps().await? {
            store.delete(step).await?;
        }
        Ok::<_, trainer::checkpoint::CheckpointError>(())
    })
    .with_context(|| format!("cannot delete the benchmark's checkpoints in {storage}"))
}

/// One run of the training loop: its wall time, and for the variant with
/// checkpoints the time training was blocked and the bytes of one checkpoint.
struct TrainRun {
    wall_s: f64,
    blocking_s: f64,
    checkpoint_bytes: Option<u64>,
}

fn step_overhead(args: &BenchCheckpointArgs, run_id: &str) -> anyhow::Result<serde_json::Value> {
    let mut spec = JobSpec::from_file(&args.spec).with_context(|| {
        format!(
            "cannot load the benchmark's job spec {} (run from the repository root, or pass --spec)",
            args.spec.display()
        )
    })?;
    spec.checkpoint.storage = spec_storage(&args.storage)?;
    spec.checkpoint.every_steps = args.every as u64;
    // Before any work: tokenization and tensors share this pool.
    trainer::device::set_cpu_threads(spec.resources.threads_per_worker as usize);
    let JobInputs { spec, source, plan } = JobInputs::load(spec)?;
    let RunPlan {
        data,
        sampler,
        lora,
        mut train,
        base_model,
        ..
    } = plan;
    train.max_steps = args.steps;
    let device = trainer::device::default_device().autodiff();
    let (mut model, tokenizer) = source.into_model(&device)?;
    let tokenizer = tokenizer.expect("JobInputs checks the tokenizer");
    let steps = SampledSteps {
        train: &data.train,
        // Only training steps are timed.
        validation: None,
        sampler: &sampler,
        micro_batch_size: spec.training.micro_batch_size as usize,
        pad_id: trainer::data::pad_id(&tokenizer),
        rank: 0,
        world: 1,
    };
    let mut collective = crate::ring::join(None)?;
    let preset = match &spec.model {
        job::spec::ModelSpec::Preset(p) => p.name().to_string(),
        job::spec::ModelSpec::Path(p) => p.to_string(),
    };

    // Trains a fresh adapter for `stop` steps, with checkpoints to job
    // `job` if given, the way `train` does: a save at every boundary and at
    // the end, then a wait for the last upload.
    let mut train_once = |job: Option<&str>, stop: usize| -> anyhow::Result<TrainRun> {
        let mut state = TrainState::new(LoraWeights::init(&lora, &model.config, train.seed));
        let mut checkpoints = match job {
            Some(job) => {
                let identity = RunIdentity::new(&spec, Some(TENANT), Some(job), None, false)?;
                Some(RunCheckpoints::open(
                    &spec,
                    &identity,
                    0,
                    &base_model,
                    std::sync::Arc::new(Discard),
                )?)
            }
            None => None,
        };
        let started = Instant::now();
        while state.step < stop {
            let next = next_checkpoint(state.step, args.every, stop);
            trainer::train::run(
                &mut model,
                &device,
                &train,
                &steps,
                &mut *collective,
                &mut state,
                &mut Silent,
                Some(next),
            )?;
            if let Some(c) = checkpoints.as_mut() {
                c.save(&state)?;
            }
        }
        let blocking_s = match checkpoints {
            Some(c) => c.finish()?,
            None => 0.0,
        };
        let wall_s = started.elapsed().as_secs_f64();
        let mut checkpoint_bytes = None;
        if let Some(job) = job {
            let store = CheckpointStore::open(&args.storage, TENANT, job)?;
            checkpoint_bytes = block_on(store.committed())?.last().map(|m| m.total_bytes());
            delete_job(&args.storage, job)?;
        }
        Ok(TrainRun {
            wall_s,
            blocking_s,
            checkpoint_bytes,
        })
    };

    train_once(None, WARMUP_STEPS.min(args.steps))?;
    // And the store: its first writes (a server making its first volumes,
    // say) are slower than the rest.
    train_once(
        Some(&format!("ckpt-{run_id}-warmup")),
        args.every.min(args.steps),
    )?;
    let (mut without, mut with, mut blocking) = (Vec::new(), Vec::new(), Vec::new());
    // Each round's own overhead: the two runs of a round are back to back,
    // so this ratio is the one least moved by the machine's drift.
    let mut paired = Vec::new();
    let mut checkpoint_bytes = None;
    for round in 0..args.rounds {
        let job = format!("ckpt-{run_id}-{round}");
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for checkpointing in order {
            if checkpointing {
                let r = train_once(Some(&job), args.steps)?;
                with.push(r.wall_s / args.steps as f64);
                blocking.push(r.blocking_s);
                checkpoint_bytes = checkpoint_bytes.or(r.checkpoint_bytes);
            } else {
                without.push(train_once(None, args.steps)?.wall_s / args.steps as f64);
            }
        }
        let pct = (with[round] - without[round]) / without[round] * 100.0;
        paired.push(pct);
        eprintln!(
            "step overhead, round {}/{}: {:.1} ms per step without checkpoints, {:.1} ms with ({pct:+.2}%; training blocked {:.3} s)",
            round + 1,
            args.rounds,
            without[round] * 1e3,
            with[round] * 1e3,
            blocking[round]
        );
    }
    let rounds_pct = paired.clone();
    let without_s = trainer::bench::median(&mut without);
    let with_s = trainer::bench::median(&mut with);
    Ok(json!({
        "bench": "checkpoint",
        "figure": "step_overhead",
        "storage": args.storage,
        "preset": preset,
        "threads": trainer::device::cpu_threads(),
        "steps": args.steps,
        "every": args.every,
        "checkpoints": args.steps.div_ceil(args.every),
        "checkpoint_bytes": checkpoint_bytes,
        "rounds": args.rounds,
        "without_s_per_step": without_s,
        "with_s_per_step": with_s,
        "overhead_pct": (with_s - without_s) / without_s * 100.0,
        "paired_overhead_pct": trainer::bench::median(&mut paired),
        "rounds_overhead_pct": rounds_pct,
        "blocking_s": trainer::bench::median(&mut blocking),
        "target_pct": TARGET_OVERHEAD_PCT,
    }))
}

fn upload(
    args: &BenchCheckpointArgs,
    root: &Location,
    run_id: &str,
) -> anyhow::Result<serde_json::Value> {
    let size = args.size_mib << 20;
    let folder = tempfile::tempdir().context("cannot create a temporary folder")?;
    let mut data = vec![0u8; size];
    rand::rng().fill_bytes(&mut data);
    let blob = folder.path().join("blob.bin");
    std::fs::write(&blob, &data).with_context(|| format!("cannot write {}", blob.display()))?;
    write_small_json(folder.path())?;
    // One allocation, handed to the bare upload as zero-copy slices.
    let whole = PutPayload::from(data)
        .into_iter()
        .next()
        .expect("a payload of one buffer");

    // The same runtime shape as the checkpoint uploader's.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start a tokio runtime")?;
    let (mut ours, mut bare) = (Vec::new(), Vec::new());
    let mut ours_bytes = 0;
    for round in 0..args.rounds {
        let job = format!("upload-{run_id}-{round}");
        let mut time_ours = || -> anyhow::Result<()> {
            let store = CheckpointStore::open(&args.storage, TENANT, &job)?;
            let step = 1;
            let started = Instant::now();
            let manifest = runtime
                .block_on(store.commit(step, folder.path(), json!({})))
                .context("CheckpointStore::commit failed")?;
            let s = started.elapsed().as_secs_f64();
            ours_bytes = manifest.total_bytes();
            ours.push(ours_bytes as f64 / s / 1e6);
            runtime
                .block_on(store.delete(step))
                .context("cannot delete the benchmark's checkpoint")?;
            Ok(())
        };
        let mut time_bare = || -> anyhow::Result<()> {
            let at = root.join(TENANT).join(&job).join("bare.bin");
            let store = at.store().clone();
            let started = Instant::now();
            runtime
                .block_on(async {
                    let upload = store.put_multipart(at.path()).await?;
                    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
                    let mut offset = 0;
                    while offset < whole.len() {
                        let end = (offset + PART_BYTES).min(whole.len());
                        if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
                            let _ = writer.abort().await;
                            return Err(e);
                        }
                        writer.put(whole.slice(offset..end));
                        offset = end;
                    }
                    writer.finish().await.map(|_| ())
                })
                .with_context(|| format!("the bare multipart upload to {} failed", at.name()))?;
            let s = started.elapsed().as_secs_f64();
            bare.push(whole.len() as f64 / s / 1e6);
            runtime
                .block_on(store.delete(at.path()))
                .with_context(|| format!("cannot delete {}", at.name()))?;
            Ok(())
        };
        if round % 2 == 0 {
            time_ours()?;
            time_bare()?;
        } else {
            time_bare()?;
            time_ours()?;
        }
        eprintln!(
            "upload, round {}/{}: {:.0} MB/s CheckpointStore::commit, {:.0} MB/s bare multipart put",
            round + 1,
            args.rounds,
            ours[round],
            bare[round]
        );
    }
    let ours_mb_s = trainer::bench::median(&mut ours);
    let bare_mb_s = trainer::bench::median(&mut bare);
    Ok(json!({
        "bench": "checkpoint",
        "figure": "upload",
        "storage": args.storage,
        "bytes": size,
        "checkpoint_bytes": ours_bytes,
        "part_bytes": PART_BYTES,
        "part_concurrency": PART_CONCURRENCY,
        "rounds": args.rounds,
        "ours_mb_s": ours_mb_s,
        "bare_mb_s": bare_mb_s,
        "ratio": ours_mb_s / bare_mb_s,
        "target_ratio": TARGET_RATIO,
    }))
}

/// The small file a checkpoint holds next to its tensors.
fn write_small_json(folder: &Path) -> anyhow::Result<()> {
    let path: PathBuf = folder.join("trainer_state.json");
    let state = json!({"epoch": 0, "step": 1, "note": "lorafleet bench checkpoint"});
    std::fs::write(&path, serde_json::to_string_pretty(&state)?)
        .with_context(|| format!("cannot write {}", path.display()))
}

fn print_figure(r: &serde_json::Value, json: bool) {
    if json {
        println!("{r}");
        return;
    }
    let f = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
    match r["figure"].as_str() {
        Some("step_overhead") => println!(
            "checkpoint  step overhead: {} threads={}, {} steps, a checkpoint every {} ({} per run, {} bytes each) to {}: {:.1} ms per step without, {:.1} ms with: {:+.2}% (target < {}%; median of the rounds' own overheads {:+.2}%); training blocked {:.3} s per run (median of {} rounds)",
            r["preset"].as_str().unwrap_or("?"),
            r["threads"],
            r["steps"],
            r["every"],
            r["checkpoints"],
            r["checkpoint_bytes"],
            r["storage"].as_str().unwrap_or("?"),
            f("without_s_per_step") * 1e3,
            f("with_s_per_step") * 1e3,
            f("overhead_pct"),
            r["target_pct"],
            f("paired_overhead_pct"),
            f("blocking_s"),
            r["rounds"]
        ),
        _ => println!(
            "checkpoint  upload {:.0} MiB to {}: CheckpointStore::commit {:.0} MB/s, bare multipart put {:.0} MB/s ({} MiB parts, {} at once): ratio {:.2} (target >= {}; median of {} rounds)",
            f("bytes") / (1024.0 * 1024.0),
            r["storage"].as_str().unwrap_or("?"),
            f("ours_mb_s"),
            f("bare_mb_s"),
            r["part_bytes"].as_u64().unwrap_or(0) >> 20,
            r["part_concurrency"],
            f("ratio"),
            r["target_ratio"],
            r["rounds"]
        ),
    }
}
