//! The short job and fleet commands: `jobs`, `status`, `cancel`, `resume`,
//! `checkpoints`, `workers`, `drain`. Each makes one call to the
//! coordinator and prints the answer as a table or summary, or as JSON with
//! `--json` (README.md, "A fleet"). A successful call exits 0 whatever state the
//! job is in.
//!
//! Not here: `submit`, `logs`, `download`, or connecting (`remote`).

use anyhow::Context;
use coordinator::api::{
    Checkpoint, Job, JobRef, ListJobsRequest, ListWorkersRequest, WorkerInfo, WorkerRef,
};
use serde_json::{Value, json};

use super::remote::{self, RemoteArgs, job_json, rpc};

/// `lorafleet jobs`: the tenant's jobs, newest first.
#[derive(clap::Args, Debug)]
pub struct JobsArgs {
    /// The most jobs to list.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// List the jobs after this id (the last id of the previous page).
    #[arg(long, value_name = "ID")]
    pub after: Option<String>,
    /// Print {"data": [jobs], "has_more"}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `lorafleet status JOB`.
#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// The job's id.
    pub job: String,
    /// Print the job as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `lorafleet cancel JOB`.
#[derive(clap::Args, Debug)]
pub struct CancelArgs {
    /// The job's id.
    pub job: String,
    /// Print the job as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `lorafleet resume JOB`.
#[derive(clap::Args, Debug)]
pub struct ResumeArgs {
    /// The job's id.
    pub job: String,
    /// Print the job as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `lorafleet checkpoints JOB`.
#[derive(clap::Args, Debug)]
pub struct CheckpointsArgs {
    /// The job's id.
    pub job: String,
    /// Print {"data": [{"step", "url", "metrics", "committed_at"}]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `lorafleet workers`.
#[derive(clap::Args, Debug)]
pub struct WorkersArgs {
    /// Print {"data": [workers]}.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

/// `lorafleet drain WORKER` and `lorafleet undrain WORKER`.
#[derive(clap::Args, Debug)]
pub struct DrainArgs {
    /// The worker's id.
    pub worker: String,
    /// Print the worker as one JSON object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

pub fn run_jobs(args: JobsArgs) -> anyhow::Result<()> {
    let list = remote::block_on(async {
        let conn = remote::connect(&args.remote).await?;
        let request = ListJobsRequest {
            limit: args.limit,
            after: args.after.clone().unwrap_or_default(),
        };
        let list = conn
            .jobs()
            .list(request)
            .await
            .map_err(rpc)
            .context("cannot list jobs")?;
        anyhow::Ok(list.into_inner())
    })?;
    if args.json {
        let data: Vec<Value> = list.data.iter().map(job_json).collect();
        println!("{}", json!({"data": data, "has_more": list.has_more}));
        return Ok(());
    }
    let now = remote::now_unix();
    let rows = list
        .data
        .iter()
        .map(|job| {
            vec![
                job.id.clone(),
                job.name.clone(),
                job.status.clone(),
                step_of(job),
                job.attempt.to_string(),
                remote::short_duration(now - job.created_at),
            ]
        })
        .collect();
    print_table(
        &["ID", "NAME", "STATUS", "STEP/TOTAL", "ATTEMPT", "AGE"],
        rows,
    );
    if list.has_more
        && let Some(last) = list.data.last()
    {
        println!("(more: --after {})", last.id);
    }
    Ok(())
}

pub fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let job = remote::block_on(async {
        let conn = remote::connect(&args.remote).await?;
        remote::get_job(&conn, &args.job).await
    })?;
    if args.json {
        println!("{}", job_json(&job));
    } else {
        print_job(&job);
    }
    Ok(())
}

pub fn run_cancel(args: CancelArgs) -> anyhow::Result<()> {
    change_job(&args.remote, &args.job, JobChange::Cancel, args.json)
}

pub fn run_resume(args: ResumeArgs) -> anyhow::Result<()> {
    change_job(&args.remote, &args.job, JobChange::Resume, args.json)
}

/// A call that changes one job and answers with it.
#[derive(Clone, Copy)]
enum JobChange {
    Cancel,
    Resume,
}

/// Makes `change` to job `id` and prints the job as it is after.
fn change_job(remote: &RemoteArgs, id: &str, change: JobChange, json: bool) -> anyhow::Result<()> {
    let job = remote::block_on(async {
        let conn = remote::connect(remote).await?;
        let mut jobs = conn.jobs();
        let request = JobRef { id: id.to_string() };
        let (reply, verb) = match change {
            JobChange::Cancel => (jobs.cancel(request).await, "cancel"),
            JobChange::Resume => (jobs.resume(request).await, "resume"),
        };
        let job = reply
            .map_err(rpc)
            .with_context(|| format!("cannot {verb} job {id}"))?;
        anyhow::Ok(job.into_inner())
    })?;
    print_changed(&job, json);
    Ok(())
}

pub fn run_checkpoints(args: CheckpointsArgs) -> anyhow::Result<()> {
    let list = remote::block_on(async {
        let conn = remote::connect(&args.remote).await?;
        let reply = conn
            .jobs()
            .list_checkpoints(JobRef {
                id: args.job.clone(),
            })
            .await;
        let list = reply
            .map_err(rpc)
            .with_context(|| format!("cannot list the checkpoints of job {}", args.job))?;
        anyhow::Ok(list.into_inner())
    })?;
    if args.json {
        let data: Vec<Value> = list.data.iter().map(checkpoint_json).collect();
        println!("{}", json!({ "data": data }));
        return Ok(());
    }
    if list.data.is_empty() {
        println!("job {} has no checkpoints yet", args.job);
        return Ok(());
    }
    let rows = list
        .data
        .iter()
        .map(|c| {
            vec![
                c.step.to_string(),
                c.url.clone(),
                metrics_summary(&remote::parse_json(&c.metrics_json)),
                remote::utc_time(c.committed_at),
            ]
        })
        .collect();
    print_table(&["STEP", "URL", "METRICS", "COMMITTED"], rows);
    Ok(())
}

pub fn run_workers(args: WorkersArgs) -> anyhow::Result<()> {
    let list = remote::block_on(async {
        let conn = remote::connect(&args.remote).await?;
        let reply = conn.workers().list(ListWorkersRequest {}).await;
        let list = reply.map_err(rpc).context("cannot list workers")?;
        anyhow::Ok(list.into_inner())
    })?;
    if args.json {
        let data: Vec<Value> = list.data.iter().map(worker_json).collect();
        println!("{}", json!({ "data": data }));
        return Ok(());
    }
    if list.data.is_empty() {
        println!("no workers have joined");
        return Ok(());
    }
    let now = remote::now_unix();
    let rows = list
        .data
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.name.clone(),
                w.host.clone(),
                w.backend.clone(),
                w.state.clone(),
                or_dash(&w.job_id),
                w.rank.map_or_else(|| "-".to_string(), |r| r.to_string()),
                format!("{} ago", remote::short_duration(now - w.last_heartbeat)),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "NAME",
            "HOST",
            "BACKEND",
            "STATE",
            "JOB",
            "RANK",
            "LAST HEARTBEAT",
        ],
        rows,
    );
    Ok(())
}

pub fn run_drain(args: DrainArgs) -> anyhow::Result<()> {
    let worker = remote::block_on(set_draining(&args, true))?;
    if args.json {
        println!("{}", worker_json(&worker));
    } else if worker.job_id.is_empty() {
        println!("worker {} ({}): {}", worker.id, worker.name, worker.state);
    } else {
        println!(
            "worker {} ({}): {}; it finishes job {} and then takes no new one",
            worker.id, worker.name, worker.state, worker.job_id
        );
    }
    Ok(())
}

pub fn run_undrain(args: DrainArgs) -> anyhow::Result<()> {
    let worker = remote::block_on(set_draining(&args, false))?;
    if args.json {
        println!("{}", worker_json(&worker));
    } else {
        println!("worker {} ({}): {}", worker.id, worker.name, worker.state);
    }
    Ok(())
}

/// Drains (`drain`) or undrains the worker `args` names.
async fn set_draining(args: &DrainArgs, drain: bool) -> anyhow::Result<WorkerInfo> {
    let conn = remote::connect(&args.remote).await?;
    let mut workers = conn.workers();
    let request = WorkerRef {
        id: args.worker.clone(),
    };
    let reply = if drain {
        workers.drain(request).await
    } else {
        workers.undrain(request).await
    };
    let verb = if drain { "drain" } else { "undrain" };
    let worker = reply
        .map_err(rpc)
        .with_context(|| format!("cannot {verb} worker {}", args.worker))?;
    Ok(worker.into_inner())
}

/// A worker as `--json` prints it: every field of `WorkerInfo`, with null
/// for no job and no rank.
pub fn worker_json(w: &WorkerInfo) -> Value {
    json!({
        "id": w.id,
        "name": w.name,
        "host": w.host,
        "backend": w.backend,
        "device": w.device,
        "memory_bytes": w.memory_bytes,
        "version": w.version,
        "state": w.state,
        "job_id": (!w.job_id.is_empty()).then_some(&w.job_id),
        "rank": w.rank,
        "registered_at": w.registered_at,
        "last_heartbeat": w.last_heartbeat,
        "ring_addr": w.ring_addr,
    })
}

/// A checkpoint as `--json` prints it.
pub fn checkpoint_json(c: &Checkpoint) -> Value {
    json!({
        "step": c.step,
        "url": c.url,
        "metrics": remote::parse_json(&c.metrics_json),
        "committed_at": c.committed_at,
    })
}

/// The answer to `cancel` or `resume`.
fn print_changed(job: &Job, json: bool) {
    if json {
        println!("{}", job_json(job));
    } else {
        println!("job {} ({}): {}", job.id, job.name, job.status);
    }
}

/// `status`'s human summary.
fn print_job(job: &Job) {
    println!("job       {} ({})", job.id, job.name);
    println!("status    {}", job.status);
    println!("step      {}", step_of(job));
    println!("attempt   {}", job.attempt);
    println!("failures  {}/{}", job.failures, job.max_failures);
    println!("created   {}", remote::utc_time(job.created_at));
    if let Some(finished) = job.finished_at {
        println!("finished  {}", remote::utc_time(finished));
    }
    if let Some(error) = &job.error {
        println!("error     {}: {}", error.code, error.message);
    }
}

/// `step/total`, with `?` for an unknown total.
fn step_of(job: &Job) -> String {
    match job.total_steps {
        Some(total) => format!("{}/{total}", job.step),
        None => format!("{}/?", job.step),
    }
}

fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        text.to_string()
    }
}

/// Checkpoint metrics as `key=value` pairs, sorted by key.
fn metrics_summary(metrics: &Value) -> String {
    let Some(object) = metrics.as_object() else {
        return if metrics.is_null() {
            "-".to_string()
        } else {
            metrics.to_string()
        };
    };
    if object.is_empty() {
        return "-".to_string();
    }
    let mut pairs: Vec<String> = object
        .iter()
        .map(|(key, value)| match value.as_f64() {
            Some(x) if !value.is_i64() && !value.is_u64() => format!("{key}={x:.4}"),
            _ => format!("{key}={value}"),
        })
        .collect();
    pairs.sort();
    pairs.join(" ")
}

/// Prints `rows` under `headers`, columns padded to their widest cell.
fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    for line in table_lines(headers, &rows) {
        println!("{line}");
    }
}

fn table_lines(headers: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let padded: Vec<String> = cells
            .zip(&widths)
            .map(|(cell, &width)| format!("{cell:<width$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut lines = vec![line(&mut headers.iter().copied())];
    lines.extend(
        rows.iter()
            .map(|row| line(&mut row.iter().map(String::as_str))),
    );
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_to_the_widest_cell() {
        let rows = vec![
            vec![
                "j-1".to_string(),
                "quickstart".to_string(),
                "running".to_string(),
            ],
            vec!["j-22".to_string(), "x".to_string(), "queued".to_string()],
        ];
        let lines = table_lines(&["ID", "NAME", "STATUS"], &rows);
        assert_eq!(lines[0], "ID    NAME        STATUS");
        assert_eq!(lines[1], "j-1   quickstart  running");
        assert_eq!(lines[2], "j-22  x           queued");
    }

    #[test]
    fn worker_json_has_every_field() {
        let worker = WorkerInfo {
            id: "w-1".into(),
            rank: Some(0),
            job_id: String::new(),
            ..WorkerInfo::default()
        };
        let value = worker_json(&worker);
        for key in [
            "id",
            "name",
            "host",
            "backend",
            "device",
            "memory_bytes",
            "version",
            "state",
            "job_id",
            "rank",
            "registered_at",
            "last_heartbeat",
            "ring_addr",
        ] {
            assert!(value.get(key).is_some(), "missing {key}");
        }
        assert_eq!(value["job_id"], Value::Null);
        assert_eq!(value["rank"], 0);
    }

    #[test]
    fn checkpoint_metrics_read_as_pairs() {
        let c = Checkpoint {
            step: 20,
            url: "file:///runs/j-1/step-20".into(),
            metrics_json: r#"{"loss": 1.23456, "eval_loss": 1.5, "tokens": 4096}"#.into(),
            committed_at: 10,
        };
        assert_eq!(checkpoint_json(&c)["metrics"]["tokens"], 4096);
        let summary = metrics_summary(&remote::parse_json(&c.metrics_json));
        assert_eq!(summary, "eval_loss=1.5000 loss=1.2346 tokens=4096");
        assert_eq!(metrics_summary(&remote::parse_json("")), "-");
    }

    #[test]
    fn an_unknown_total_shows_as_a_question_mark() {
        let job = Job {
            step: 5,
            ..Job::default()
        };
        assert_eq!(step_of(&job), "5/?");
        let job = Job {
            total_steps: Some(200),
            ..job
        };
        assert_eq!(step_of(&job), "5/200");
    }
}
