//! `lorafleet bench`: measure a workload and print its figures.
//!
//! `bench train --world N` and `bench allreduce` start N rank processes of
//! this binary on 127.0.0.1 (the launcher), each of which runs the same
//! command with the hidden `--rank/--peers` flags and prints its own
//! figures as JSON; the launcher combines them.

use anyhow::{Context, bail};
use trainer::collective::TcpRing;

use super::UsageError;
use crate::cli::{
    BenchAllreduceArgs, BenchArgs, BenchForwardArgs, BenchSgemmArgs, BenchTrainArgs, BenchWorkload,
};
use crate::ring::{join, nccl_beside, ring_config, run_local_ranks, run_local_ranks_with};

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.workload {
        BenchWorkload::Forward(a) => forward(a),
        BenchWorkload::Train(a) => train(a),
        BenchWorkload::Allreduce(a) => allreduce(a),
        BenchWorkload::Fleet(a) => super::bench_fleet::run(a),
        BenchWorkload::Checkpoint(a) => super::bench_checkpoint::run(a),
        BenchWorkload::Sgemm(a) => sgemm(a),
    }
}

#[cfg(not(feature = "flex"))]
fn sgemm(_: BenchSgemmArgs) -> anyhow::Result<()> {
    bail!("bench sgemm measures the CPU backend's kernel, and this build has none (feature `flex`)")
}

#[cfg(feature = "flex")]
fn sgemm(args: BenchSgemmArgs) -> anyhow::Result<()> {
    trainer::device::set_cpu_threads(args.threads);
    let dtype = trainer::device::FrozenDType::parse(&args.dtype)
        .with_context(|| format!("unknown --dtype {}", args.dtype))?;
    let r = trainer::bench::sgemm(args.runs, dtype);
    if args.json {
        println!("{}", serde_json::to_value(&r)?);
        return Ok(());
    }
    for s in &r.shapes {
        println!(
            "sgemm  {} threads={} {}x{}x{}: {:.1} GFLOP/s",
            r.dtype, r.threads, s.m, s.k, s.n, s.gflops
        );
    }
    println!("sgemm  {} peak {:.1} GFLOP/s", r.dtype, r.peak_gflops);
    println!("sgemm  {} kernel {}", r.dtype, r.kernel);
    Ok(())
}

/// The (rows, tokens per row) `bench train` runs: the preset's, or the flags'.
fn train_shape(args: &BenchTrainArgs) -> (usize, usize) {
    let (rows, seq) = trainer::bench::batch_shape(args.preset.preset());
    (
        args.batch.map_or(rows, |b| b as usize),
        args.seq.map_or(seq, |s| s as usize),
    )
}

/// The arguments a launcher passes on to its rank processes.
fn rank_args(workload: &str, rank: usize, peers: &str, mut rest: Vec<String>) -> Vec<String> {
    let mut args = vec!["bench".into(), workload.into()];
    args.append(&mut rest);
    args.extend([
        "--rank".into(),
        rank.to_string(),
        "--peers".into(),
        peers.into(),
    ]);
    args
}

fn link_flags(link: &crate::cli::LinkArgs) -> Vec<String> {
    let mut flags: Vec<String> = vec![
        "--ring-timeout".into(),
        link.ring_timeout.to_string(),
        "--transport".into(),
        link.transport.transport().name().into(),
        "--ring-chunk-kib".into(),
        link.ring_chunk_kib.to_string(),
    ];
    if link.no_shared_group {
        flags.push("--no-shared-group".into());
    }
    flags
}

fn train(args: BenchTrainArgs) -> anyhow::Result<()> {
    let preset = args.preset.preset();
    if args.child.rank.is_none() && args.world > 1 {
        return train_ranks(&args);
    }
    trainer::device::set_cpu_threads(args.threads);
    let device = trainer::device::default_device();
    let plan = args
        .child
        .rank
        .map(|rank| ring_config(rank, &args.child.peers, &args.link))
        .transpose()?;
    let mut collective = join(plan)?;
    let r = trainer::bench::train(
        preset,
        train_shape(&args),
        args.dtype
            .as_deref()
            .and_then(trainer::device::FrozenDType::parse),
        trainer::train::grad::StepMode {
            engine: args.engine.engine(),
            activations: if args.gradient_checkpointing {
                trainer::train::grad::Activations::Recomputed
            } else {
                trainer::train::grad::Activations::Kept
            },
        },
        trainer::device::cpu_threads(),
        args.warmup_steps,
        args.steps,
        &device,
        &mut *collective,
    )?;
    print_train(&serde_json::to_value(&r)?, args.json)
}

/// `bench train --world N`: rounds of one process, then N ranks, on the
/// same workload, so that scaling is a ratio taken in one run (the median
/// over rounds: this machine's speed drifts between processes).
fn train_ranks(args: &BenchTrainArgs) -> anyhow::Result<()> {
    let preset = args.preset.preset();
    let (batch, seq) = train_shape(args);
    if args.world > batch {
        bail!(UsageError(format!(
            "--world {} is more ranks than the {batch} rows of a {} batch",
            args.world,
            preset.name()
        )));
    }
    let mut workload = vec![
        "--preset".to_string(),
        preset.name().into(),
        "--engine".into(),
        args.engine.engine().name().into(),
        "--threads".into(),
        args.threads.to_string(),
        "--batch".into(),
        batch.to_string(),
        "--seq".into(),
        seq.to_string(),
        "--warmup-steps".into(),
        args.warmup_steps.to_string(),
        "--steps".into(),
        args.steps.to_string(),
        "--json".into(),
    ];
    if let Some(dtype) = &args.dtype {
        workload.extend(["--dtype".into(), dtype.clone()]);
    }
    if args.gradient_checkpointing {
        workload.push("--gradient-checkpointing".into());
    }
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let parse = |text: &str| -> anyhow::Result<serde_json::Value> {
        serde_json::from_str(text.trim())
            .context("a benchmark process printed something other than its report")
    };
    let tps = |r: &serde_json::Value| r["tokens_per_s"].as_f64().unwrap_or(0.0);
    let (mut singles, mut aggregates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let mut report = serde_json::Value::Null;
    let mut rss: f64 = 0.0;
    let mut step_ms = Vec::new();
    for _ in 0..args.rounds.max(1) {
        let single = std::process::Command::new(&exe)
            .args(["bench", "train"])
            .args(&workload)
            .output()
            .context("cannot start the single-process run")?;
        if !single.status.success() {
            bail!(
                "the single-process run failed: {}",
                String::from_utf8_lossy(&single.stderr)
            );
        }
        let single = tps(&parse(&String::from_utf8_lossy(&single.stdout))?);
        let outputs = run_local_ranks(args.world, |rank, peers| {
            let mut rest = workload.clone();
            rest.extend(link_flags(&args.link));
            rank_args("train", rank, peers, rest)
        })?;
        let reports: Vec<serde_json::Value> = outputs
            .iter()
            .map(|o| parse(o))
            .collect::<anyhow::Result<_>>()?;
        // The job goes at the pace of its slowest rank; memory is the largest rank's.
        let slowest = reports.iter().map(tps).fold(f64::MAX, f64::min);
        for r in &reports {
            rss = rss.max(r["peak_rss_mib"].as_f64().unwrap_or(0.0));
        }
        step_ms.push(
            reports
                .iter()
                .map(|r| r["step_ms"].as_f64().unwrap_or(0.0))
                .fold(0.0, f64::max),
        );
        singles.push(single);
        aggregates.push(slowest);
        ratios.push(slowest / (args.world as f64 * single));
        report = reports[0].clone();
    }
    report["tokens_per_s"] = trainer::bench::median(&mut aggregates).into();
    report["peak_rss_mib"] = rss.into();
    report["step_ms"] = trainer::bench::median(&mut step_ms).into();
    report["single_tokens_per_s"] = trainer::bench::median(&mut singles).into();
    report["scaling_efficiency"] = trainer::bench::median(&mut ratios).into();
    report["rounds"] = args.rounds.max(1).into();
    print_train(&report, args.json)
}

fn print_train(r: &serde_json::Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{r}");
    } else {
        println!(
            "train  {} {} world={} threads={} batch {}x{} LoRA r=8 q,v ({} values): {:.0} tokens/s ({:.1} ms per step, median of {}), peak RSS {:.0} MiB, matrix products {:.1} GFLOP/s",
            r["preset"].as_str().unwrap_or("?"),
            r["dtype"].as_str().unwrap_or("?"),
            r["world"],
            r["threads"],
            r["batch"],
            r["seq_len"],
            r["lora_parameters"],
            r["tokens_per_s"].as_f64().unwrap_or(0.0),
            r["step_ms"].as_f64().unwrap_or(0.0),
            r["timed_steps"],
            r["peak_rss_mib"].as_f64().unwrap_or(0.0),
            r["matmul_gflops"].as_f64().unwrap_or(0.0)
        );
        if let Some(e) = r["scaling_efficiency"].as_f64() {
            println!(
                "       1 process in the same run: {:.0} tokens/s; {} ranks reach {:.1}% of {} x that (median of {} rounds)",
                r["single_tokens_per_s"].as_f64().unwrap_or(0.0),
                r["world"],
                e * 100.0,
                r["world"],
                r["rounds"]
            );
        }
    }
    Ok(())
}

/// "16M" → 16 MiB; "4096" → 4096 bytes.
fn parse_size(s: &str) -> anyhow::Result<usize> {
    let t = s.trim();
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, ""),
    };
    let n: usize = digits
        .parse()
        .map_err(|_| UsageError(format!("--sizes: {s:?} is not a size like 16M")))?;
    let mult = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KIB" => 1 << 10,
        "M" | "MIB" => 1 << 20,
        "G" | "GIB" => 1 << 30,
        _ => bail!(UsageError(format!(
            "--sizes: unknown unit in {s:?} (use K, M or G)"
        ))),
    };
    if n == 0 || !n.is_multiple_of(4) && mult == 1 {
        bail!(UsageError(format!(
            "--sizes: {s:?} must be a positive multiple of 4 bytes (f32 values)"
        )));
    }
    Ok(n * mult)
}

fn allreduce(args: BenchAllreduceArgs) -> anyhow::Result<()> {
    let sizes = args
        .sizes
        .iter()
        .map(|s| parse_size(s))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if args.nccl && (args.child.rank.is_some() || args.world == 1) {
        return nccl_rank(&args, &sizes);
    }
    if let Some(rank) = args.child.rank {
        // One rank: time every size, one JSON line each.
        let mut ring = TcpRing::connect(&ring_config(rank, &args.child.peers, &args.link)?)?;
        let transport = (ring.transports().0, ring.uses_group());
        for &size in &sizes {
            let iters = args
                .iters
                .unwrap_or_else(|| trainer::bench::allreduce_iters(size));
            let r = trainer::bench::allreduce(&mut ring, transport, size, iters)?;
            println!("{}", serde_json::to_string(&r)?);
        }
        return Ok(());
    }
    if args.world < 2 {
        bail!(UsageError("--world must be at least 2".into()));
    }
    let baselines = if args.baselines {
        let bytes = 256 << 20;
        Some((
            trainer::bench::memcpy_gbps(bytes),
            trainer::bench::loopback_gbps(bytes).context("loopback TCP baseline")?,
        ))
    } else {
        None
    };
    let outputs = run_local_ranks_with(
        args.world,
        |rank, peers| {
            let mut rest = vec!["--sizes".into(), args.sizes.join(",")];
            if let Some(i) = args.iters {
                rest.extend(["--iters".into(), i.to_string()]);
            }
            if args.nccl {
                rest.push("--nccl".into());
            }
            rest.extend(link_flags(&args.link));
            rank_args("allreduce", rank, peers, rest)
        },
        // NCCL takes one GPU per rank.
        |rank| match args.nccl {
            true => vec![("CUDA_VISIBLE_DEVICES".into(), rank.to_string())],
            false => Vec::new(),
        },
    )?;
    let per_rank: Vec<Vec<serde_json::Value>> = outputs
        .iter()
        .map(|o| o.lines().map(serde_json::from_str).collect())
        .collect::<Result<_, _>>()
        .context("a rank printed something other than its figures")?;
    if !args.json {
        println!(
            "{:>12} {:>6} {:>10} {:>6} {:>12} {:>12} {:>12}",
            "size", "ranks", "transport", "iters", "time (ms)", "algbw GB/s", "busbw GB/s"
        );
    }
    for (i, &size) in sizes.iter().enumerate() {
        // nccl-tests report the slowest rank's time.
        let mut line = per_rank[0][i].clone();
        let time = per_rank
            .iter()
            .map(|r| r[i]["time_s"].as_f64().unwrap_or(f64::MAX))
            .fold(0.0, f64::max);
        let algbw = size as f64 / time / 1e9;
        let world = args.world as f64;
        line["time_s"] = time.into();
        line["algbw_GBps"] = algbw.into();
        line["busbw_GBps"] = (algbw * 2.0 * (world - 1.0) / world).into();
        if let Some((memcpy, loopback)) = baselines {
            line["memcpy_GBps"] = memcpy.into();
            line["loopback_GBps"] = loopback.into();
        }
        if args.json {
            println!("{line}");
        } else {
            println!(
                "{:>12} {:>6} {:>10} {:>6} {:>12.2} {:>12.3} {:>12.3}",
                size,
                args.world,
                match (line["transport"].as_str(), line["shared_group"].as_bool()) {
                    (Some("shm"), Some(true)) => "shm group",
                    (Some(t), _) => t,
                    (None, _) => "?",
                },
                line["iters"],
                time * 1e3,
                algbw,
                line["busbw_GBps"].as_f64().unwrap_or(0.0)
            );
        }
    }
    if let (Some((memcpy, loopback)), false) = (baselines, args.json) {
        println!(
            "baselines on 256 MiB: memcpy (1 thread) {memcpy:.2} GB/s, loopback TCP (1 stream) {loopback:.2} GB/s"
        );
    }
    Ok(())
}

/// One rank of `bench allreduce --nccl` (or the whole of it at --world 1):
/// NCCL beside the ring, each size timed, and one sum checked; one JSON
/// line per size, as the ring's ranks print.
fn nccl_rank(args: &BenchAllreduceArgs, sizes: &[usize]) -> anyhow::Result<()> {
    let plan = args
        .child
        .rank
        .map(|rank| ring_config(rank, &args.child.peers, &args.link))
        .transpose()?;
    let timeout = plan
        .as_ref()
        .map_or(std::time::Duration::from_secs(60), |c| c.timeout);
    let mut nccl = nccl_beside(join(plan)?, timeout)?;
    let (rank, world) = (nccl.rank(), nccl.world());
    // Rank r adds r + 1: every rank must end with 1 + 2 + ... + world.
    let mut check = vec![(rank + 1) as f32; 1 << 20];
    nccl.all_reduce_sum(&mut check)?;
    let want = (world * (world + 1) / 2) as f32;
    if let Some(bad) = check.iter().find(|x| **x != want) {
        bail!("NCCL all-reduce gave {bad}, not {want}");
    }
    for &size in sizes {
        let iters = args
            .iters
            .unwrap_or_else(|| trainer::bench::allreduce_iters(size));
        let r = trainer::bench::allreduce(&mut *nccl, ("nccl", false), size, iters)?;
        let mut line = serde_json::to_value(&r)?;
        line["checked_sum"] = true.into();
        if args.child.rank.is_some() || args.json {
            println!("{line}");
        } else {
            println!(
                "{:>12} {:>6} {:>10} {:>6} {:>12.3} {:>12.3} {:>12.3}",
                r.size_bytes,
                world,
                "nccl",
                r.iters,
                r.time_s * 1e3,
                r.algbw_gbps,
                r.busbw_gbps
            );
        }
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
