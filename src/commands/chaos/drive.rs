//! Running one job of a chaos run: submit it, fire its planned faults at
//! their moments on workers that are alive at that moment, bring killed
//! workers back, thaw frozen ones and heal cut-off ones when their time is
//! up, and follow the
//! job to its end (cancelling it past a time limit). Also what is learnt
//! from the job afterwards (the mean step time from its `train.step`
//! events) and putting the fleet back together before the next job.
//!
//! Not here: the processes and signals themselves (`cluster`), drawing
//! the plan (`plan`), or judging the outcome (`verdict`).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coordinator::api::{JobRef, ListWorkersRequest, WatchRequest, WorkerInfo};
use coordinator::client::Connection;
use tokio_stream::StreamExt;

use super::cluster::ChaosCluster;
use super::plan::{FaultKind, FaultPlan, MIN_GAP, PlannedFault};
use crate::commands::remote::{self, rpc};
use crate::commands::submit::submit_file;

/// How often the job and the fleet are looked at.
const POLL: Duration = Duration::from_millis(100);
/// How many times one worker may exit on its own during a job (it is
/// respawned each time) before the run stops.
const MAX_CRASHES: u32 = 3;

/// A fault as it was done.
#[derive(Clone, Debug)]
pub struct InjectedFault {
    pub kind: FaultKind,
    pub worker: String,
    /// Whether the worker ran a rank of the job.
    pub busy: bool,
    /// That rank, when the coordinator said which.
    pub rank: Option<u32>,
    /// Seconds after the job's submission.
    pub at_s: f64,
}

/// One job of a chaos run, as it went.
#[derive(Clone, Debug)]
pub struct JobRun {
    pub name: String,
    pub id: String,
    /// The job's final status, or `hung` when it had to be cancelled.
    pub status: String,
    /// The job's error, or why it counts as hung.
    pub error: Option<String>,
    /// Seconds from submission to the final status.
    pub wall_s: f64,
    /// Seconds from submission until the job's first step was reported.
    pub startup_s: Option<f64>,
    /// The mean `step_time_s` of its `train.step` events (every rank and
    /// attempt), if it has any.
    pub mean_step_s: Option<f64>,
    pub attempts: u32,
    pub failures: u32,
    pub faults: Vec<InjectedFault>,
    /// Planned faults that did not fire (the job had ended).
    pub not_injected: usize,
    /// Things seen in the fleet that no fault explains (a worker that
    /// exited on its own).
    pub anomalies: Vec<String>,
}

/// What is put right when its time comes: a killed worker respawned, a
/// frozen one thawed, a cut-off one healed.
enum Restore {
    Respawn(usize),
    Thaw(usize),
    Heal(usize),
}

/// Submits `spec` and follows the job to its end while `plan`'s faults
/// fire; past `limit` the job is cancelled and counts as hung. Returns with
/// every slot of the fleet filled and thawed.
pub async fn run_job(
    conn: &Connection,
    cluster: &mut ChaosCluster,
    spec: &Path,
    plan: &FaultPlan,
    limit: Duration,
) -> anyhow::Result<JobRun> {
    let submitted = Instant::now();
    let job = submit_file(conn, spec).await?;
    eprintln!(
        "job {} ({}) submitted, {} fault(s) planned",
        job.id,
        job.name,
        plan.faults.len()
    );
    let mut run = JobRun {
        name: job.name.clone(),
        id: job.id.clone(),
        status: job.status.clone(),
        error: None,
        wall_s: 0.0,
        startup_s: None,
        mean_step_s: None,
        attempts: 0,
        failures: 0,
        faults: Vec::new(),
        not_injected: 0,
        anomalies: Vec::new(),
    };
    let mut restores: Vec<(Instant, Restore)> = Vec::new();
    let mut next = 0;
    let mut last_fault: Option<Instant> = None;
    let mut crashes = vec![0u32; cluster.names().len()];
    let job = loop {
        let now = Instant::now();
        let elapsed = now - submitted;
        for (at, restore) in std::mem::take(&mut restores) {
            if at > now {
                restores.push((at, restore));
                continue;
            }
            apply(cluster, &restore, elapsed)?;
        }
        for (slot, how) in cluster.exited() {
            let note = format!(
                "worker {} exited on its own ({how}) at {:.1} s",
                cluster.name(slot),
                elapsed.as_secs_f64()
            );
            eprintln!("  {note}");
            run.anomalies.push(note);
            crashes[slot] += 1;
            if crashes[slot] > MAX_CRASHES {
                bail!(
                    "worker {} exited on its own {} times during job {}; see its logs in {}",
                    cluster.name(slot),
                    crashes[slot],
                    run.id,
                    cluster.folder().display()
                );
            }
            cluster.respawn(slot)?;
        }
        let job = remote::get_job(conn, &run.id).await?;
        if run.startup_s.is_none() && job.step >= 1 {
            run.startup_s = Some(elapsed.as_secs_f64());
        }
        if remote::is_final(&job.status) {
            run.wall_s = elapsed.as_secs_f64();
            break job;
        }
        if elapsed > limit {
            run.wall_s = elapsed.as_secs_f64();
            let why = format!(
                "did not end within {:.0} s ({} at step {}, attempt {}); cancelled",
                limit.as_secs_f64(),
                job.status,
                job.step,
                job.attempt
            );
            conn.jobs()
                .cancel(JobRef { id: run.id.clone() })
                .await
                .map_err(rpc)
                .with_context(|| format!("cannot cancel the hung job {}", run.id))?;
            let mut job = remote::get_job(conn, &run.id).await?;
            job.status = "hung".into();
            job.error = Some(coordinator::api::JobError {
                code: "hung".into(),
                message: why,
            });
            break job;
        }
        let gap_kept = last_fault.is_none_or(|t| now >= t + MIN_GAP);
        if let Some(fault) = plan.faults.get(next)
            && elapsed >= fault.at
            && gap_kept
            // With no worker alive the fault waits for one.
            && let Some((injected, restore)) = fire(conn, cluster, fault, &run.id, elapsed).await?
        {
            eprintln!("  {}", describe(&injected, fault.kind.out_for()));
            restores.push((now + fault.kind.out_for(), restore));
            run.faults.push(injected);
            last_fault = Some(now);
            next += 1;
        }
        tokio::time::sleep(POLL).await;
    };
    run.not_injected = plan.faults.len() - next;
    // The job has ended: what is still out comes back now.
    let elapsed = submitted.elapsed();
    for (_, restore) in restores {
        apply(cluster, &restore, elapsed)?;
    }
    run.status = job.status.clone();
    run.error = job
        .error
        .as_ref()
        .filter(|_| job.status != "succeeded")
        .map(|e| format!("{}: {}", e.code, e.message));
    run.attempts = job.attempt;
    run.failures = job.failures;
    run.mean_step_s = mean_step_time(conn, &run.id).await?;
    eprintln!(
        "job {} ({}) {} after {:.1} s (attempt {}, {} failure(s))",
        run.id, run.name, run.status, run.wall_s, run.attempts, run.failures
    );
    Ok(run)
}

/// Does `fault` to a live worker of the fleet, chosen as the fault says
/// among those running a rank of job `job` and the others; returns what
/// was done and what will undo it, or `None` when no worker is alive.
async fn fire(
    conn: &Connection,
    cluster: &mut ChaosCluster,
    fault: &PlannedFault,
    job: &str,
    elapsed: Duration,
) -> anyhow::Result<Option<(InjectedFault, Restore)>> {
    let workers = list_workers(conn).await?;
    let alive = cluster.alive();
    let busy: Vec<usize> = alive
        .iter()
        .copied()
        .filter(|&slot| runs_job(&workers, cluster.name(slot), job))
        .collect();
    let Some(slot) = fault.target(&busy, &alive) else {
        return Ok(None);
    };
    let injected = InjectedFault {
        kind: fault.kind,
        worker: cluster.name(slot).to_string(),
        busy: busy.contains(&slot),
        rank: rank_in(&workers, cluster.name(slot), job),
        at_s: elapsed.as_secs_f64(),
    };
    let restore = match fault.kind {
        FaultKind::Kill { .. } => {
            cluster.kill(slot);
            Restore::Respawn(slot)
        }
        FaultKind::Freeze { .. } => {
            cluster.freeze(slot);
            Restore::Thaw(slot)
        }
        FaultKind::Partition { .. } => {
            cluster.partition(slot);
            Restore::Heal(slot)
        }
    };
    Ok(Some((injected, restore)))
}

fn apply(cluster: &mut ChaosCluster, restore: &Restore, elapsed: Duration) -> anyhow::Result<()> {
    let at = elapsed.as_secs_f64();
    match *restore {
        Restore::Respawn(slot) => {
            cluster.respawn(slot)?;
            eprintln!("  {at:.1} s: worker {} respawned", cluster.name(slot));
        }
        Restore::Thaw(slot) => {
            cluster.thaw(slot);
            eprintln!("  {at:.1} s: worker {} thawed", cluster.name(slot));
        }
        Restore::Heal(slot) => {
            cluster.heal(slot);
            eprintln!("  {at:.1} s: worker {} reconnected", cluster.name(slot));
        }
    }
    Ok(())
}

/// `kill chaos-w2 (rank 1) at 4.2 s, out 1.3 s`.
pub fn describe(fault: &InjectedFault, out_for: Duration) -> String {
    let what = match fault.kind {
        FaultKind::Kill { .. } => "dead",
        FaultKind::Freeze { .. } => "frozen",
        FaultKind::Partition { .. } => "cut off",
    };
    format!(
        "{:.1} s: {} {} ({}), {what} for {:.1} s",
        fault.at_s,
        fault.kind.name(),
        fault.worker,
        rank_text(fault),
        out_for.as_secs_f64()
    )
}

/// `rank 1`, `busy` (rank unknown) or `idle`.
pub fn rank_text(fault: &InjectedFault) -> String {
    match (fault.busy, fault.rank) {
        (true, Some(r)) => format!("rank {r}"),
        (true, None) => "busy".to_string(),
        (false, _) => "idle".to_string(),
    }
}

async fn list_workers(conn: &Connection) -> anyhow::Result<Vec<WorkerInfo>> {
    let list = conn
        .workers()
        .list(ListWorkersRequest {})
        .await
        .map_err(rpc)
        .context("cannot list the workers")?;
    Ok(list.into_inner().data)
}

/// Whether worker `name` (not lost) runs a rank of job `job`.
fn runs_job(workers: &[WorkerInfo], name: &str, job: &str) -> bool {
    workers
        .iter()
        .any(|w| w.name == name && w.state != "lost" && w.job_id == job)
}

/// The rank worker `name` (not lost) runs for job `job`, if it runs one.
fn rank_in(workers: &[WorkerInfo], name: &str, job: &str) -> Option<u32> {
    workers
        .iter()
        .filter(|w| w.name == name && w.state != "lost" && w.job_id == job)
        .find_map(|w| w.rank)
}

/// The mean `step_time_s` of job `id`'s `train.step` events (every rank,
/// every attempt); `None` if it has none.
async fn mean_step_time(conn: &Connection, id: &str) -> anyhow::Result<Option<f64>> {
    let request = WatchRequest {
        job_id: id.to_string(),
        after_id: 0,
        follow: false,
    };
    let mut events = conn
        .jobs()
        .watch_events(request)
        .await
        .map_err(rpc)
        .with_context(|| format!("cannot read the events of job {id}"))?
        .into_inner();
    let (mut sum, mut count) = (0.0, 0u32);
    while let Some(event) = events.next().await {
        let event = event
            .map_err(rpc)
            .with_context(|| format!("cannot read the events of job {id}"))?;
        if event.r#type != "train.step" {
            continue;
        }
        if let Some(s) = remote::parse_json(&event.data_json)["step_time_s"].as_f64() {
            sum += s;
            count += 1;
        }
    }
    Ok((count > 0).then(|| sum / f64::from(count)))
}

/// Waits until every slot's worker is registered and idle. A slot that
/// is not within `limit` gets a new process (noted in `anomalies`), and the
/// wait starts over once; still missing then is an error.
pub async fn wait_for_fleet(
    conn: &Connection,
    cluster: &mut ChaosCluster,
    limit: Duration,
    anomalies: &mut Vec<String>,
) -> anyhow::Result<()> {
    for round in 0..2 {
        let deadline = Instant::now() + limit;
        let missing = loop {
            let workers = list_workers(conn).await?;
            let missing: Vec<usize> = (0..cluster.names().len())
                .filter(|&slot| {
                    !workers
                        .iter()
                        .any(|w| w.name == cluster.name(slot) && w.state == "idle")
                })
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                break missing;
            }
            tokio::time::sleep(POLL).await;
        };
        let names: Vec<&str> = missing.iter().map(|&s| cluster.name(s)).collect();
        if round == 1 {
            bail!(
                "worker(s) {} did not come back idle within {:.0} s",
                names.join(", "),
                limit.as_secs_f64()
            );
        }
        let note = format!(
            "worker(s) {} were not idle {:.0} s after the job; restarted",
            names.join(", "),
            limit.as_secs_f64()
        );
        eprintln!("  {note}");
        anomalies.push(note);
        for slot in missing {
            cluster.respawn(slot)?;
        }
    }
    Ok(())
}
