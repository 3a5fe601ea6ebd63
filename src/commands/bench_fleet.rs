//! `lorafleet bench fleet`: the control plane's two figures.
//!
//! * **Time to first step**: on an embedded fleet whose workers have
//!   already joined, from `submit` (upload and queue included) to the first
//!   `train.step` event of the job, median over `--rounds` jobs.
//! * **Coordinator load**: `--jobs` queued jobs and `--sim-workers`
//!   simulated workers (tasks of this process) heartbeating every second;
//!   the coordinator process's CPU time over `--seconds`, as a share of one
//!   core (from /proc/PID/stat).
//! * **HTTP load** (`--http-clients N`): windows of `--seconds` without and
//!   with HTTP requests alternate ([`http_load`]: the jobs list as the
//!   console asks for it and `/metrics` scrapes); the coordinator's CPU in
//!   each kind of window, and the jobs list's latency percentiles.
//!
//! Not here: training speed (`bench train`) or the ring (`bench allreduce`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
// The simulated workers speak the `Workers` service's messages.
use coordinator::api;
use coordinator::client::{CallError, Connection, JobStatus};
use coordinator::local_fleet::LocalFleet;
use job::JobSpec;
use job::spec::Workers;
use tokio_stream::StreamExt;

mod http_load;

use super::run::{start_fleet, wait_for_workers};
use super::submit::submit_spec;
use crate::cli::{BenchFleetArgs, RemoteArgs};
use crate::connection::block_on;

pub fn run(args: BenchFleetArgs) -> anyhow::Result<()> {
    let scratch = tempfile::Builder::new()
        .prefix("lorafleet-bench-")
        .tempdir()?;
    let mut spec = JobSpec::from_file(&args.spec)?;
    spec.resources.workers = Workers::fixed(args.workers);
    if !spec.usable_worker_counts().contains(&args.workers) {
        bail!(
            "global_batch_size {} does not divide over {} workers",
            spec.training.global_batch_size,
            args.workers
        );
    }
    spec.checkpoint.storage = job::spec::PathOrUrl::Path(scratch.path().join("runs"));
    let spec_file = scratch.path().join("job.yaml");
    std::fs::write(&spec_file, spec.to_yaml())?;

    let first_step = {
        let fleet = start_fleet(&scratch.path().join("a"), args.workers, "cpu")?;
        block_on(time_to_first_step(&fleet, &spec_file, args.rounds))?
    };
    let load = {
        let fleet = start_fleet(&scratch.path().join("b"), 0, "cpu")?;
        block_on(coordinator_load(&fleet, &spec_file, &args))?
    };
    let median = median(&first_step);
    let mut report = serde_json::json!({
        "submit_to_first_step_s": median,
        "submit_to_first_step_runs_s": first_step,
        "workers": args.workers,
        "queued_jobs": load.queued,
        "sim_workers": args.sim_workers,
        "heartbeat_s": 1.0,
        "coordinator_cpu_share": load.cpu_share,
        "measured_s": load.seconds,
    });
    if let Some(http) = &load.http {
        let fields = serde_json::json!({
            "http_clients": args.http_clients,
            "http_rate_per_s": args.http_rate,
            "scrape_rate_per_s": args.scrape_rate,
            "coordinator_cpu_share_with_http": http.cpu_share,
            "coordinator_cpu_share_windows": load.windows,
            "coordinator_cpu_share_with_http_windows": http.windows,
            "http_cpu_added_share": http.cpu_share - load.cpu_share,
            "http_measured_s": http.seconds,
            "jobs_list_requests": http.samples.jobs_list_ms.len(),
            "jobs_list_p50_ms": http_load::quantile(&http.samples.jobs_list_ms, 0.5),
            "jobs_list_p99_ms": http_load::quantile(&http.samples.jobs_list_ms, 0.99),
            "jobs_list_max_ms": http_load::quantile(&http.samples.jobs_list_ms, 1.0),
            "metrics_scrapes": http.samples.scrape_ms.len(),
            "metrics_scrape_p50_ms": http_load::quantile(&http.samples.scrape_ms, 0.5),
            "metrics_scrape_p99_ms": http_load::quantile(&http.samples.scrape_ms, 0.99),
            "http_errors": http.samples.errors,
        });
        if let (Some(all), Some(more)) = (report.as_object_mut(), fields.as_object()) {
            all.extend(more.clone());
        }
    }
    if args.json {
        println!("{report}");
    } else {
        println!(
            "submit to first training step: {median:.2} s (median of {}; {} workers already joined)",
            first_step.len(),
            args.workers
        );
        println!(
            "coordinator load: {:.2}% of one core with {} queued jobs and {} workers heartbeating every second (over {:.0} s)",
            load.cpu_share * 100.0,
            load.queued,
            args.sim_workers,
            load.seconds
        );
        if let Some(http) = &load.http {
            let list = &http.samples.jobs_list_ms;
            println!(
                "with HTTP load ({} connections, {} job lists/s, {} /metrics scrapes/s): {:.2}% of one core, {:+.2} points; jobs list p50 {:.1} ms, p99 {:.1} ms over {} requests; /metrics p50 {:.1} ms over {}; {} errors",
                args.http_clients,
                args.http_rate,
                args.scrape_rate,
                http.cpu_share * 100.0,
                (http.cpu_share - load.cpu_share) * 100.0,
                http_load::quantile(list, 0.5),
                http_load::quantile(list, 0.99),
                list.len(),
                http_load::quantile(&http.samples.scrape_ms, 0.5),
                http.samples.scrape_ms.len(),
                http.samples.errors,
            );
        }
    }
    if let Some(error) = load
        .http
        .as_ref()
        .and_then(|h| h.samples.first_error.as_ref())
    {
        eprintln!("first HTTP failure: {error}");
    }
    Ok(())
}

async fn connect(fleet: &LocalFleet) -> anyhow::Result<Connection> {
    crate::connection::connect(&RemoteArgs {
        coordinator: fleet.url().to_string(),
        token: Some(fleet.tenant_token().to_string()),
        ca: None,
    })
    .await
}

/// Seconds from submit to the first step, one per round.
async fn time_to_first_step(
    fleet: &LocalFleet,
    spec: &Path,
    rounds: usize,
) -> anyhow::Result<Vec<f64>> {
    let conn = connect(fleet).await?;
    wait_for_workers(fleet, &conn).await?;
    let mut times = Vec::new();
    for _ in 0..rounds.max(1) {
        let start = Instant::now();
        let job = submit_spec(&conn, spec, false).await?;
        let mut events = conn.watch(&job.id, 0, true).await?;
        loop {
            let event = events
                .next()
                .await
                .context("the job ended before its first step")??;
            if event.kind == "train.step" {
                break;
            }
            if event.kind == "job.failed" {
                bail!("the job failed: {}", event.message);
            }
        }
        times.push(start.elapsed().as_secs_f64());
        conn.cancel(&job.id).await?;
        // The workers are free again once their ranks are stopped.
        wait_for_workers(fleet, &conn).await?;
    }
    Ok(times)
}

struct Load {
    queued: usize,
    /// The coordinator's CPU share without HTTP load (mean of the windows).
    cpu_share: f64,
    /// Each window's share.
    windows: Vec<f64>,
    seconds: f64,
    /// The windows with HTTP load, with --http-clients.
    http: Option<HttpFigures>,
}

struct HttpFigures {
    cpu_share: f64,
    windows: Vec<f64>,
    seconds: f64,
    samples: http_load::Samples,
}

/// Queues the jobs, starts the simulated workers, and measures.
async fn coordinator_load(
    fleet: &LocalFleet,
    spec: &Path,
    args: &BenchFleetArgs,
) -> anyhow::Result<Load> {
    let conn = connect(fleet).await?;
    for _ in 0..args.jobs {
        submit_spec(&conn, spec, false).await?;
    }
    let cluster =
        Connection::open(fleet.url(), fleet.cluster_token(), Duration::from_secs(5)).await?;
    let mut tasks = Vec::new();
    for i in 0..args.sim_workers {
        tasks.push(tokio::spawn(simulated_worker(cluster.clone(), i)));
    }
    // Let registration and the first placements settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = fleet.coordinator_pid().expect("the coordinator runs");
    let window = Duration::from_secs_f64(args.seconds);
    let address = fleet.url().trim_start_matches("http://").to_string();
    let (mut quiet, mut loaded) = (Vec::new(), Vec::new());
    let mut samples = http_load::Samples::default();
    let rounds = if args.http_clients > 0 {
        args.http_rounds.max(1)
    } else {
        1
    };
    for _ in 0..rounds {
        quiet.push(cpu_share_over(pid, window).await?);
        if args.http_clients > 0 {
            let load = http_load::HttpLoad::start(
                &address,
                fleet.tenant_token(),
                args.http_clients,
                args.http_rate,
                args.scrape_rate,
            );
            loaded.push(cpu_share_over(pid, window).await?);
            samples.add(load.stop().await);
        }
    }
    let mut stopped = 0;
    for task in tasks {
        if task.is_finished() {
            stopped += 1;
            if stopped == 1 {
                let why = match task.await {
                    Ok(Err(e)) => format!("{e:#}"),
                    Ok(Ok(())) => "its heartbeat stream ended".to_string(),
                    Err(e) => e.to_string(),
                };
                eprintln!("a simulated worker stopped early: {why}");
            }
        } else {
            task.abort();
        }
    }
    if stopped > 0 {
        eprintln!(
            "{stopped} of {} simulated workers stopped early",
            args.sim_workers
        );
    }
    let queued = conn
        .list(1000, None)
        .await?
        .data
        .iter()
        .filter(|j| j.status == JobStatus::Queued)
        .count();
    let mean = |shares: &[(f64, f64)]| {
        let (used, seconds) = shares.iter().fold((0.0, 0.0), |(u, s), (share, secs)| {
            (u + share * secs, s + secs)
        });
        (used / seconds, seconds)
    };
    let (cpu_share, seconds) = mean(&quiet);
    let http = (!loaded.is_empty()).then(|| {
        let (cpu_share, seconds) = mean(&loaded);
        HttpFigures {
            cpu_share,
            windows: loaded.iter().map(|(share, _)| *share).collect(),
            seconds,
            samples,
        }
    });
    Ok(Load {
        queued,
        cpu_share,
        windows: quiet.iter().map(|(share, _)| *share).collect(),
        seconds,
        http,
    })
}

/// The coordinator's CPU time over `window` as a share of one core, and
/// the seconds it was measured over.
async fn cpu_share_over(pid: u32, window: Duration) -> anyhow::Result<(f64, f64)> {
    let before = cpu_seconds(pid)?;
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let used = cpu_seconds(pid)? - before;
    let seconds = start.elapsed().as_secs_f64();
    Ok((used / seconds, seconds))
}

/// A worker that registers, reports every second, and answers each
/// assignment by reporting it running (it never trains).
async fn simulated_worker(conn: Connection, i: usize) -> anyhow::Result<()> {
    let mut workers = conn.workers();
    let reply = workers
        .register(api::RegisterRequest {
            name: format!("sim-{i}"),
            host: "sim".into(),
            backend: api::Backend::Cpu.into(),
            device: "cpu".into(),
            memory_bytes: 0,
            version: coordinator::PROTOCOL_VERSION.into(),
            ring_addr: format!("127.0.0.1:{}", 20000 + i),
            ..Default::default()
        })
        .await
        .map_err(CallError::from)?
        .into_inner();
    let id = reply.worker_id;
    // Every report proves the worker is the one that registered.
    let secret = reply.worker_secret;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let report = |job: &str, attempt: u32| api::WorkerReport {
        worker_id: id.clone(),
        job_id: job.to_string(),
        attempt,
        state: if job.is_empty() {
            api::RankState::Idle
        } else {
            api::RankState::Running
        }
        .into(),
        worker_secret: secret.clone(),
        ..Default::default()
    };
    tx.send(report("", 0)).await?;
    let mut orders = workers
        .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(CallError::from)?
        .into_inner();
    let mut current = (String::new(), 0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => tx.send(report(&current.0, current.1)).await?,
            order = orders.next() => match order {
                Some(Ok(api::Order { kind: Some(api::order::Kind::Assign(a)), .. })) => {
                    current = (a.job_id, a.attempt);
                }
                Some(Ok(_)) => {}
                _ => return Ok(()),
            },
        }
    }
}

/// User plus system CPU seconds of process `pid`.
fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("cannot read /proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), 1-based from
    // field 3: utime is field 14, stime field 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<f64>().ok());
    let (Some(user), Some(system)) = (ticks(14), ticks(15)) else {
        bail!("unexpected /proc/{pid}/stat format");
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((user + system) / hz.max(1.0))
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
}
