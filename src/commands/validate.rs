//! `lorafleet validate FILE [KEY=VALUE ...]`: check a spec (with its
//! overrides written in) and its datasets without training.

use job::JobSpec;

use crate::cli::ValidateArgs;
use job::recipe::JobInputs;

pub fn run(args: ValidateArgs) -> anyhow::Result<()> {
    let spec = JobSpec::from_file_with_overrides(&args.file, &args.overrides)?.spec;
    let job = JobInputs::load(spec)?;
    let g = job.spec.training.global_batch_size as usize;
    let train = job.plan.data.train.stats();
    let validation = job.plan.data.validation.as_ref().map(|v| v.stats());
    let report = serde_json::json!({
        "name": job.spec.name,
        "model": job.plan.base_model,
        "train": train,
        "validation": validation,
        "global_batch_size": g,
        "steps_per_epoch": train.steps_per_epoch(g),
        "max_steps": job.plan.train.max_steps,
        "warmup_steps": job.plan.train.warmup_steps,
        "lora_scale": job.plan.lora.scale(),
        "output_dir": job.plan.output_dir.display().to_string(),
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    println!("{}: valid", args.file.display());
    let line = |what: &str, s: &trainer::data::DatasetStats| {
        println!(
            "  {what}: {} samples, {} tokens ({} targets), {} truncated to {} tokens, {} dropped without targets",
            s.samples,
            s.tokens,
            s.target_tokens,
            s.truncated,
            job.spec.dataset.max_seq_len,
            s.dropped_without_targets
        );
    };
    line("train", &train);
    if let Some(v) = &validation {
        line("validation", v);
    }
    println!(
        "  {} steps per epoch at global batch {g}; {} steps ({} warmup)",
        train.steps_per_epoch(g),
        job.plan.train.max_steps,
        job.plan.train.warmup_steps
    );
    Ok(())
}
