//! `lorafleet logs JOB [-f]`: a job's events, as lines or NDJSON, and with
//! `-f` on a terminal live progress bars (the job's step, loss, tokens/s
//! and ETA, one line per worker rank) until the job ends. [`follow`] is the
//! watching part, shared with `submit --wait` and `run`.
//!
//! Not here: connecting (`connection`), the JSON shapes (`output`), or what
//! ends a job (the coordinator).

use std::collections::{BTreeMap, VecDeque};
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::Context;
use coordinator::client::{CallError, Connection, Event, Job, JobStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use job::JobEvent;
use job::event::step_summary;

use crate::cli::LogsArgs;
use crate::connection::with_connection;
use crate::output::{event_json, short_duration, utc_time};

pub mod reconnect;

pub use reconnect::{CoordinatorLost, Reconnect};

pub fn run_logs(args: LogsArgs) -> anyhow::Result<()> {
    with_connection(&args.remote, async |conn| {
        if args.follow {
            let job = follow(conn, &args.job, args.json).await?;
            final_outcome(&job)
        } else {
            print_events_so_far(conn, &args.job, args.json).await
        }
    })
}

/// Prints job `job_id`'s events until it reaches a final status, then
/// returns the job as it ended. With `json`, each event is one NDJSON line
/// on stdout; otherwise one text line each, and when stdout and stderr are
/// terminals, progress bars on stderr with the lines above them (`train.step`
/// events then feed the bar instead of printing).
///
/// A coordinator that goes away (restarted, crashed, cut off) is waited
/// for as [`Reconnect`] says (up to [`reconnect::RECONNECT_FOR`], with a
/// line on stderr), and the events continue after the last one printed:
/// none twice, none lost, and a job that ended meanwhile is reported as it
/// ended. Needs a runtime with timers.
pub async fn follow(conn: &Connection, job_id: &str, json: bool) -> anyhow::Result<Job> {
    let mut reconnect = Reconnect::new(conn.url());
    let job = reconnect
        .retry(|| conn.status(job_id), say_on_stderr)
        .await?
        .with_context(|| format!("cannot get job {job_id}"))?;
    let terminal = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
    let mut view = if json {
        EventView::Json
    } else if terminal {
        EventView::Bars(Bars::new(&job))
    } else {
        EventView::Lines
    };
    let result = watch_until_final(conn, job_id, &mut view, &mut reconnect).await;
    view.finish(result.as_ref().ok());
    result
}

async fn watch_until_final(
    conn: &Connection,
    job_id: &str,
    view: &mut EventView,
    reconnect: &mut Reconnect,
) -> anyhow::Result<Job> {
    let mut after_id = 0;
    // The job as it ended, once seen final: one more watch, begun after
    // that, gives whatever the last one missed (a coordinator that stopped
    // closes watches before their job ends).
    let mut ended: Option<Job> = None;
    loop {
        let outcome = watch(conn, job_id, &mut after_id, true, view, Some(reconnect)).await?;
        if let Err(failed) = outcome {
            if !failed.is_transient() {
                return Err(failed).with_context(|| format!("lost the events of job {job_id}"));
            }
            reconnect.pause(&failed, |note| view.note(note)).await?;
            continue;
        }
        if let Some(job) = ended {
            return Ok(job);
        }
        match conn.status(job_id).await {
            Ok(job) if job.status.is_final() => ended = Some(job),
            // The watch was closed before the job ended (the coordinator
            // may be stopping): watch again from the last event seen.
            Ok(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            Err(failed) if failed.is_transient() => {
                reconnect.pause(&failed, |note| view.note(note)).await?;
            }
            Err(failed) => {
                return Err(failed).with_context(|| format!("cannot get job {job_id}"));
            }
        }
    }
}

fn say_on_stderr(note: &str) {
    eprintln!("{note}");
}

/// Streams the events after `*after_id` into `view`, moving `*after_id`
/// along; an event at or below it is not shown again. A stream that opens
/// ends `reconnect`'s outage, if any, there and then. The outer error is
/// local (printing failed); the inner one is the coordinator's.
async fn watch(
    conn: &Connection,
    job_id: &str,
    after_id: &mut i64,
    follow: bool,
    view: &mut EventView,
    reconnect: Option<&mut Reconnect>,
) -> anyhow::Result<Result<(), CallError>> {
    let mut stream = match conn.watch(job_id, *after_id, follow).await {
        Ok(stream) => stream,
        Err(failed) => return Ok(Err(failed)),
    };
    if let Some(reconnect) = reconnect {
        reconnect.reached(|note| view.note(note));
    }
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) if event.id <= *after_id => {}
            Ok(event) => {
                *after_id = event.id;
                view.show(&event)?;
            }
            Err(failed) => return Ok(Err(failed)),
        }
    }
    Ok(Ok(()))
}

async fn print_events_so_far(conn: &Connection, job_id: &str, json: bool) -> anyhow::Result<()> {
    let mut view = if json {
        EventView::Json
    } else {
        EventView::Lines
    };
    let mut after_id = 0;
    watch(conn, job_id, &mut after_id, false, &mut view, None)
        .await?
        .with_context(|| format!("cannot read the events of job {job_id}"))
}

/// Ok for a job that succeeded; an error saying how it ended otherwise
/// (exit code 1).
pub fn final_outcome(job: &Job) -> anyhow::Result<()> {
    let why = job
        .error
        .as_ref()
        .map(|e| match e.code.as_str() {
            code if code.is_empty() || code == job.status.name() => format!(": {}", e.message),
            code => format!(": {} ({code})", e.message),
        })
        .unwrap_or_default();
    match job.status {
        JobStatus::Succeeded => Ok(()),
        JobStatus::Failed => anyhow::bail!("job {} ({}) failed{why}", job.id, job.name),
        JobStatus::Cancelled => {
            anyhow::bail!("job {} ({}) was cancelled{why}", job.id, job.name)
        }
        other => anyhow::bail!("job {} ({}) has not ended: it is {other}", job.id, job.name),
    }
}

/// An event as one line: `TIME LEVEL TYPE message`.
pub fn event_line(event: &Event) -> String {
    let data;
    let text = if event.message.is_empty() {
        data = event.data.to_string();
        data.as_str()
    } else {
        event.message.as_str()
    };
    format!(
        "{} {:<5} {:<16} {text}",
        utc_time(event.created_at),
        event.level.name(),
        event.kind
    )
}

/// Where events go.
enum EventView {
    Json,
    Lines,
    Bars(Bars),
}

impl EventView {
    fn show(&mut self, event: &Event) -> std::io::Result<()> {
        match self {
            EventView::Json => writeln!(std::io::stdout().lock(), "{}", event_json(event)),
            EventView::Lines => writeln!(std::io::stdout().lock(), "{}", event_line(event)),
            EventView::Bars(bars) => bars.show(event),
        }
    }

    /// A line for people about the connection: on stderr, above the bars
    /// when there are some.
    fn note(&self, text: &str) {
        match self {
            EventView::Bars(bars) => {
                let _ = bars.multi.println(text);
            }
            EventView::Json | EventView::Lines => say_on_stderr(text),
        }
    }

    fn finish(&mut self, job: Option<&Job>) {
        if let EventView::Bars(bars) = self {
            bars.finish(job);
        }
    }
}

/// The job's bar and one line per rank, on stderr.
struct Bars {
    multi: MultiProgress,
    job: ProgressBar,
    ranks: BTreeMap<u32, ProgressBar>,
    rate: StepRate,
}

impl Bars {
    fn new(job: &Job) -> Bars {
        let multi = MultiProgress::new();
        let bar = multi.add(ProgressBar::new(job.total_steps.unwrap_or(0)));
        bar.set_style(
            ProgressStyle::with_template("{prefix} step {pos}/{len} [{bar:30}] {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(job.name.clone());
        bar.set_position(job.step);
        bar.set_message(job.status.to_string());
        Bars {
            multi,
            job: bar,
            ranks: BTreeMap::new(),
            rate: StepRate::default(),
        }
    }

    fn show(&mut self, event: &Event) -> std::io::Result<()> {
        match JobEvent::from_data(&event.kind, &event.data) {
            Ok(JobEvent::TrainStep {
                total_steps,
                metrics,
            }) => {
                self.job.set_length(total_steps as u64);
                self.job.set_position(metrics.step as u64);
                self.rate.record(metrics.step as u64, event.created_at);
                let mut message = step_summary(&metrics);
                if let Some(eta) = self.rate.eta(total_steps as u64) {
                    message = format!("{message} · ETA {}", short_duration(eta));
                }
                self.job.set_message(message);
                return Ok(());
            }
            Ok(JobEvent::RankStarted {
                rank,
                worker_name,
                host,
                ..
            }) => {
                let line = self.rank_line(rank);
                line.set_prefix(format!("{worker_name} on {host}"));
                line.set_message("running");
            }
            Ok(JobEvent::RankFinished(end)) => self.rank_line(end.rank).set_message("finished"),
            Ok(JobEvent::RankFailed(end)) => {
                let error = if end.error.is_empty() {
                    "no reason given"
                } else {
                    &end.error
                };
                self.rank_line(end.rank)
                    .set_message(format!("failed: {error}"));
            }
            _ => {
                // Until training reports a step, the bar says what the job does.
                if let Some(state) = event.kind.strip_prefix("job.") {
                    self.job.set_message(state.to_string());
                }
            }
        }
        self.multi.println(event_line(event))
    }

    /// The line of rank `rank`, made on first use and kept in rank order.
    fn rank_line(&mut self, rank: u32) -> &ProgressBar {
        let below = self.ranks.range(..rank).count();
        let multi = &self.multi;
        self.ranks.entry(rank).or_insert_with(|| {
            let line = multi.insert(1 + below, ProgressBar::new_spinner());
            line.set_style(
                ProgressStyle::with_template(&format!("  rank {rank}: {{prefix}}: {{msg}}"))
                    .expect("valid template"),
            );
            line
        })
    }

    fn finish(&mut self, job: Option<&Job>) {
        if let Some(job) = job {
            self.job.set_position(job.step);
            self.job.finish_with_message(job.status.to_string());
        } else {
            self.job.abandon();
        }
        for line in self.ranks.values() {
            line.abandon();
        }
    }
}

/// Steps per second over the last few `train.step` events, from their
/// timestamps (so a replay of old events estimates as well as live ones).
#[derive(Default)]
struct StepRate {
    recent: VecDeque<(u64, i64)>,
}

impl StepRate {
    const WINDOW: usize = 32;

    fn record(&mut self, step: u64, at: i64) {
        if self.recent.back().is_some_and(|&(last, _)| step <= last) {
            // A restart from a checkpoint: the old pace says nothing.
            self.recent.clear();
        }
        if self.recent.len() == Self::WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back((step, at));
    }

    /// Seconds left to reach step `total`, if the pace is known.
    fn eta(&self, total: u64) -> Option<i64> {
        let &(first_step, first_at) = self.recent.front()?;
        let &(last_step, last_at) = self.recent.back()?;
        let steps = last_step.checked_sub(first_step).filter(|&s| s > 0)?;
        let seconds = last_at - first_at;
        if seconds <= 0 || total <= last_step {
            return None;
        }
        let left = (total - last_step) as f64 * seconds as f64 / steps as f64;
        Some(left.round() as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use coordinator::client::{EventLevel, JobError};

    #[test]
    fn only_success_is_ok() {
        let job = Job::new("j-1", "quick", JobStatus::Succeeded);
        assert!(final_outcome(&job).is_ok());
        let failed = Job {
            status: JobStatus::Failed,
            error: Some(JobError {
                code: "max_failures".into(),
                message: "rank 1 ran out of memory".into(),
            }),
            ..job.clone()
        };
        let err = final_outcome(&failed).unwrap_err();
        assert!(
            err.to_string().contains("rank 1 ran out of memory"),
            "{err}"
        );
        assert_eq!(crate::commands::exit_code(&err), 1);
        let cancelled = Job {
            status: JobStatus::Cancelled,
            ..job
        };
        let err = final_outcome(&cancelled).unwrap_err();
        assert!(err.to_string().contains("cancelled"), "{err}");
        assert_eq!(crate::commands::exit_code(&err), 1);
    }

    #[test]
    fn the_help_states_the_reconnect_bound() {
        use clap::Args;
        let command = LogsArgs::augment_args(clap::Command::new("logs"));
        let follow = command
            .get_arguments()
            .find(|a| a.get_id() == "follow")
            .and_then(|a| a.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        let bound = format!("up to {} s", reconnect::RECONNECT_FOR.as_secs());
        assert!(follow.contains(&bound), "{follow}");
    }

    #[test]
    fn event_lines_carry_time_level_type_and_message() {
        let event = Event {
            id: 1,
            job_id: "j-1".into(),
            created_at: 0,
            level: EventLevel::Warn,
            kind: "worker.lost".into(),
            message: "worker w-2 stopped answering".into(),
            data: serde_json::Value::Null,
        };
        assert_eq!(
            event_line(&event),
            "1970-01-01T00:00:00Z warn  worker.lost      worker w-2 stopped answering"
        );
        let quiet = Event {
            message: String::new(),
            data: serde_json::json!({"rank": 1}),
            ..event
        };
        assert_eq!(
            event_line(&quiet),
            r#"1970-01-01T00:00:00Z warn  worker.lost      {"rank":1}"#
        );
    }

    #[test]
    fn eta_follows_the_recent_pace() {
        let mut rate = StepRate::default();
        assert_eq!(rate.eta(100), None);
        rate.record(10, 1000);
        assert_eq!(rate.eta(100), None);
        rate.record(20, 1020);
        assert_eq!(rate.eta(100), Some(160));
        // A restart from step 10 forgets the old pace.
        rate.record(10, 1100);
        assert_eq!(rate.eta(100), None);
        rate.record(12, 1101);
        assert_eq!(rate.eta(100), Some(44));
        assert_eq!(rate.eta(12), None);
    }
}
