//! The short job and fleet commands: `jobs`, `status`, `cancel`, `resume`,
//! `checkpoints`, `workers`, `drain`. Each makes one call to the
//! coordinator and prints the answer as a table or summary, or as JSON with
//! `--json` (README.md, "A fleet"). A successful call exits 0 whatever state the
//! job is in. `jobs` pages on the coordinator (`--limit`/`--after`,
//! `--status`); `workers` and `checkpoints` get their whole (short) list
//! and page it here ([`page`]).
//!
//! Not here: `submit`, `logs`, `download`, connecting (`connection`), or
//! the JSON shapes (`output`).

use anyhow::Context;
use coordinator::client::{Job, Worker};
use serde_json::Value;

use crate::cli::{
    CancelArgs, CheckpointsArgs, DrainArgs, JobsArgs, RemoteArgs, ResumeArgs, StatusArgs,
    WorkersArgs,
};
use crate::commands::UsageError;
use crate::connection::with_connection;
use crate::output::{
    checkpoint_json, job_json, list_json, now_unix, short_duration, utc_time, worker_json,
};

pub fn run_jobs(args: JobsArgs) -> anyhow::Result<()> {
    let list = with_connection(&args.remote, async |conn| {
        let list = conn
            .list_in(args.limit, args.after.as_deref(), &args.statuses)
            .await;
        list.context("cannot list jobs")
    })?;
    if args.json {
        let data: Vec<Value> = list.data.iter().map(job_json).collect();
        println!("{}", list_json(data, list.has_more));
        return Ok(());
    }
    let now = now_unix();
    let rows = list
        .data
        .iter()
        .map(|job| {
            vec![
                job.id.clone(),
                job.name.clone(),
                job.status.to_string(),
                step_of(job),
                loss(job.train_loss),
                loss(job.valid_loss),
                eta(job),
                job.attempt.to_string(),
                short_duration(now - job.created_at),
            ]
        })
        .collect();
    print_table(
        &[
            "ID",
            "NAME",
            "STATUS",
            "STEP/TOTAL",
            "TRAIN LOSS",
            "VALID LOSS",
            "ETA",
            "ATTEMPT",
            "AGE",
        ],
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
    let job = with_connection(&args.remote, async |conn| {
        let job = conn.status(&args.job).await;
        job.with_context(|| format!("cannot get job {}", args.job))
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
    let job = with_connection(remote, async |conn| {
        let (reply, verb) = match change {
            JobChange::Cancel => (conn.cancel(id).await, "cancel"),
            JobChange::Resume => (conn.resume(id).await, "resume"),
        };
        reply.with_context(|| format!("cannot {verb} job {id}"))
    })?;
    print_changed(&job, json);
    Ok(())
}

pub fn run_checkpoints(args: CheckpointsArgs) -> anyhow::Result<()> {
    let list = with_connection(&args.remote, async |conn| {
        let list = conn.checkpoints(&args.job).await;
        list.with_context(|| format!("cannot list the checkpoints of job {}", args.job))
    })?;
    let (list, has_more) =
        page(list, args.limit, args.after.as_ref(), |c| &c.step).map_err(|()| {
            let after = args.after.unwrap_or_default();
            UsageError(format!(
                "--after {after}: job {} has no checkpoint at step {after}",
                args.job
            ))
        })?;
    if args.json {
        let data: Vec<Value> = list.iter().map(checkpoint_json).collect();
        println!("{}", list_json(data, has_more));
        return Ok(());
    }
    if list.is_empty() {
        if args.after.is_some() {
            println!("no more checkpoints");
        } else {
            println!("job {} has no checkpoints yet", args.job);
        }
        return Ok(());
    }
    let rows = list
        .iter()
        .map(|c| {
            vec![
                c.step.to_string(),
                c.url.clone(),
                metrics_summary(&c.metrics),
                utc_time(c.committed_at),
            ]
        })
        .collect();
    print_table(&["STEP", "URL", "METRICS", "COMMITTED"], rows);
    if has_more && let Some(last) = list.last() {
        println!("(more: --after {})", last.step);
    }
    Ok(())
}

pub fn run_workers(args: WorkersArgs) -> anyhow::Result<()> {
    let list = with_connection(&args.remote, async |conn| {
        conn.list_workers().await.context("cannot list workers")
    })?;
    let (list, has_more) =
        page(list, args.limit, args.after.as_ref(), |w| &w.id).map_err(|()| {
            UsageError(format!(
                "--after {}: no such worker",
                args.after.as_deref().unwrap_or_default()
            ))
        })?;
    if args.json {
        let data: Vec<Value> = list.iter().map(worker_json).collect();
        println!("{}", list_json(data, has_more));
        return Ok(());
    }
    if list.is_empty() {
        if args.after.is_some() {
            println!("no more workers");
        } else {
            println!("no workers have joined");
        }
        return Ok(());
    }
    let now = now_unix();
    let rows = list
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.name.clone(),
                w.host.clone(),
                w.backend.clone(),
                w.state.to_string(),
                w.job_id.clone().unwrap_or_else(|| "-".to_string()),
                w.rank.map_or_else(|| "-".to_string(), |r| r.to_string()),
                format!("{} ago", short_duration(now - w.last_heartbeat)),
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
    if has_more && let Some(last) = list.last() {
        println!("(more: --after {})", last.id);
    }
    Ok(())
}

/// One page of `items`: those after the one whose `key` is `after` (all
/// when `None`), at most `limit` of them (all when `None`), and whether
/// more follow. `Err(())` when no item has the key `after`.
fn page<T, K: PartialEq + ?Sized>(
    items: Vec<T>,
    limit: Option<u32>,
    after: Option<&K>,
    key: impl Fn(&T) -> &K,
) -> Result<(Vec<T>, bool), ()> {
    let start = match after {
        None => 0,
        Some(after) => items.iter().position(|item| key(item) == after).ok_or(())? + 1,
    };
    let mut rest: Vec<T> = items.into_iter().skip(start).collect();
    let limit = limit.map_or(usize::MAX, |l| l as usize);
    let has_more = rest.len() > limit;
    rest.truncate(limit);
    Ok((rest, has_more))
}

pub fn run_drain(args: DrainArgs) -> anyhow::Result<()> {
    let worker = set_draining(&args, true)?;
    if args.json {
        println!("{}", worker_json(&worker));
    } else if let Some(job) = &worker.job_id {
        println!(
            "worker {} ({}): {}; it finishes job {job} and then takes no new one",
            worker.id, worker.name, worker.state
        );
    } else {
        println!("worker {} ({}): {}", worker.id, worker.name, worker.state);
    }
    Ok(())
}

pub fn run_undrain(args: DrainArgs) -> anyhow::Result<()> {
    let worker = set_draining(&args, false)?;
    if args.json {
        println!("{}", worker_json(&worker));
    } else {
        println!("worker {} ({}): {}", worker.id, worker.name, worker.state);
    }
    Ok(())
}

/// Drains (`drain`) or undrains the worker `args` names.
fn set_draining(args: &DrainArgs, drain: bool) -> anyhow::Result<Worker> {
    with_connection(&args.remote, async |conn| {
        let (reply, verb) = if drain {
            (conn.drain(&args.worker).await, "drain")
        } else {
            (conn.undrain(&args.worker).await, "undrain")
        };
        reply.with_context(|| format!("cannot {verb} worker {}", args.worker))
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
    if job.train_loss.is_some() || job.valid_loss.is_some() {
        println!(
            "loss      train {}, valid {}",
            loss(job.train_loss),
            loss(job.valid_loss)
        );
    }
    if let Some(tokens_per_s) = job.tokens_per_s {
        let per_step = job
            .step_seconds
            .map(|s| format!(" ({s:.2} s/step)"))
            .unwrap_or_default();
        println!("speed     {tokens_per_s:.0} tokens/s{per_step}");
    }
    if job.trained_tokens > 0 {
        println!("trained   {} tokens", job.trained_tokens);
    }
    if job.eta_seconds.is_some() {
        println!("eta       {}", eta(job));
    }
    println!("attempt   {}", job.attempt);
    println!("failures  {}/{}", job.failures, job.max_failures);
    println!("created   {}", utc_time(job.created_at));
    if let Some(finished) = job.finished_at {
        println!("finished  {}", utc_time(finished));
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

/// A loss with 4 decimals, `-` when there is none yet.
fn loss(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |loss| format!("{loss:.4}"))
}

/// The time left, short (`3m`), `-` when unknown.
fn eta(job: &Job) -> String {
    job.eta_seconds
        .filter(|s| s.is_finite())
        .map_or_else(|| "-".to_string(), |s| short_duration(s.ceil() as i64))
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
    use serde_json::json;

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
    fn checkpoint_metrics_read_as_pairs() {
        let c = coordinator::client::Checkpoint {
            step: 20,
            url: "file:///runs/j-1/step-20".into(),
            metrics: json!({"loss": 1.23456, "eval_loss": 1.5, "tokens": 4096}),
            committed_at: 10,
        };
        assert_eq!(checkpoint_json(&c)["metrics"]["tokens"], 4096);
        let summary = metrics_summary(&c.metrics);
        assert_eq!(summary, "eval_loss=1.5000 loss=1.2346 tokens=4096");
        assert_eq!(metrics_summary(&Value::Null), "-");
    }

    #[test]
    fn pages_start_after_the_named_item_and_say_whether_more_follow() {
        fn key(item: &String) -> &str {
            item
        }
        let strings =
            |names: &[&str]| -> Vec<String> { names.iter().map(ToString::to_string).collect() };
        let items = strings(&["a", "b", "c", "d"]);
        assert_eq!(
            page(items.clone(), None, None, key),
            Ok((items.clone(), false))
        );
        assert_eq!(
            page(items.clone(), Some(2), None, key),
            Ok((strings(&["a", "b"]), true))
        );
        assert_eq!(
            page(items.clone(), Some(2), Some("b"), key),
            Ok((strings(&["c", "d"]), false))
        );
        assert_eq!(
            page(items.clone(), Some(1), Some("c"), key),
            Ok((strings(&["d"]), false))
        );
        assert_eq!(
            page(items.clone(), None, Some("d"), key),
            Ok((vec![], false))
        );
        assert_eq!(page(items, None, Some("x"), key), Err(()));
    }

    #[test]
    fn losses_and_eta_read_plainly() {
        let job = Job {
            train_loss: Some(1.234_56),
            eta_seconds: Some(125.2),
            ..Job::new("j-1", "x", coordinator::client::JobStatus::Running)
        };
        assert_eq!(loss(job.train_loss), "1.2346");
        assert_eq!(loss(job.valid_loss), "-");
        assert_eq!(eta(&job), "2m");
        assert_eq!(eta(&Job::new("j-2", "x", job.status)), "-");
    }

    #[test]
    fn an_unknown_total_shows_as_a_question_mark() {
        let job = Job {
            step: 5,
            ..Job::new("j-1", "x", coordinator::client::JobStatus::Running)
        };
        assert_eq!(step_of(&job), "5/?");
        let job = Job {
            total_steps: Some(200),
            ..job
        };
        assert_eq!(step_of(&job), "5/200");
    }
}
