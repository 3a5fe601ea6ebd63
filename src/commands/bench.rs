//! `lorafleet bench`: measure a workload and print its figures.

use crate::cli::{BenchArgs, BenchForwardArgs, BenchTrainArgs, BenchWorkload};

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.workload {
        BenchWorkload::Forward(a) => forward(a),
        BenchWorkload::Train(a) => train(a),
    }
}

fn train(args: BenchTrainArgs) -> anyhow::Result<()> {
    trainer::device::set_cpu_threads(args.threads);
    let device = trainer::device::default_device();
    let preset = args.preset.preset();
    let r = trainer::bench::train(
        preset,
        trainer::device::cpu_threads(),
        args.warmup_steps,
        args.steps,
        &device,
    )?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "train  {} threads={} batch {}x{} LoRA r=8 q,v ({} values): {:.0} tokens/s ({:.1} ms per step, median of {}), peak RSS {:.0} MiB",
            r.preset,
            r.threads,
            r.batch,
            r.seq_len,
            r.lora_parameters,
            r.tokens_per_s,
            r.step_ms,
            r.timed_steps,
            r.peak_rss_mib
        );
    }
    Ok(())
}

fn forward(args: BenchForwardArgs) -> anyhow::Result<()> {
    trainer::device::set_cpu_threads(args.threads);
    let device = trainer::device::default_device();
    let preset = args.preset.preset();
    let r = trainer::bench::forward(preset, trainer::device::cpu_threads(), args.runs, &device)?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "forward  {} threads={} batch {}x{}: {:.0} tokens/s ({:.1} ms per pass, median of {})",
            r.preset, r.threads, r.batch, r.seq_len, r.tokens_per_s, r.forward_ms, r.timed_runs
        );
        println!(
            "decode   {} threads={} batch 1: {:.1} tokens/s ({} new tokens, KV cache)",
            r.preset, r.threads, r.decode_tokens_per_s, r.decode_tokens
        );
    }
    Ok(())
}
