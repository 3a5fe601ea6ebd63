//! Running one job of a chaos run: submit it, fire its planned faults at
//! their moments on workers that are alive at that moment, bring killed
//! workers back, thaw frozen ones and heal cut-off ones when their time is
//! up, and follow the job to its end (past a time limit it is cancelled
//! and counts as hung: [`Ending::Hung`], this run's verdict, never the
//! job's status). Also what is learnt
//! from the job afterwards (the mean step time from its `train.step`
//! events) and putting the fleet back together before the next job.
//!
//! Not here: the processes and signals themselves (`cluster`), drawing
//! the plan (`plan`), or judging the outcome (`verdict`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use coordinator::client::{Connection, Job, JobStatus, Worker, WorkerState};
use job::JobSpec;
use job::event::JobEvent;

use super::cluster::ChaosCluster;
use super::plan::{FaultKind, FaultPlan, MIN_GAP, PlannedFault};
use crate::commands::submit::submit_parsed;

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

/// A chaos job's spec: the file it was written to, as read back.
pub struct SpecFile {
    pub path: PathBuf,
    pub spec: JobSpec,
}

/// How a chaos job ended: the final status the coordinator gave it, or
/// hung, chaos's own verdict (never a job status) on a job that did not
/// end within its time limit and was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    Final(JobStatus),
    Hung,
}

impl Ending {
    pub fn succeeded(self) -> bool {
        self == Ending::Final(JobStatus::Succeeded)
    }

    /// The job's status word, or `hung`: what reports and `--json` say.
    pub fn name(self) -> &'static str {
        match self {
            Ending::Final(status) => status.name(),
            Ending::Hung => "hung",
        }
    }
}

impl std::fmt::Display for Ending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One job of a chaos run, as it went.
#[derive(Clone, Debug)]
pub struct JobRun {
    pub name: String,
    pub id: String,
    pub ending: Ending,
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
    spec: &SpecFile,
    plan: &FaultPlan,
    limit: Duration,
) -> anyhow::Result<JobRun> {
    let submitted = Instant::now();
    let job = submit_parsed(conn, &spec.path, &spec.spec, false).await?;
    eprintln!(
        "job {} ({}) submitted, {} fault(s) planned",
        job.id,
        job.name,
        plan.faults.len()
    );
    let id = job.id;
    let mut startup_s = None;
    let mut faults = Vec::new();
    let mut anomalies = Vec::new();
    let mut restores: Vec<(Instant, Restore)> = Vec::new();
    let mut next = 0;
    let mut last_fault: Option<Instant> = None;
    let mut crashes = vec![0u32; cluster.names().len()];
    // The job as it ended, and why it counts as hung if it does.
    let (job, hung, wall_s) = loop {
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
            anomalies.push(note);
            crashes[slot] += 1;
            if crashes[slot] > MAX_CRASHES {
                bail!(
                    "worker {} exited on its own {} times during job {id}; see its logs in {}",
                    cluster.name(slot),
                    crashes[slot],
                    cluster.folder().display()
                );
            }
            cluster.respawn(slot)?;
        }
        let job = get_job(conn, &id).await?;
        if startup_s.is_none() && job.step >= 1 {
            startup_s = Some(elapsed.as_secs_f64());
        }
        if job.status.is_final() {
            break (job, None, elapsed.as_secs_f64());
        }
        if elapsed > limit {
            let why = format!(
                "did not end within {:.0} s ({} at step {}, attempt {}); cancelled",
                limit.as_secs_f64(),
                job.status,
                job.step,
                job.attempt
            );
            conn.cancel(&id)
                .await
                .with_context(|| format!("cannot cancel the hung job {id}"))?;
            let job = get_job(conn, &id).await?;
            break (job, Some(why), elapsed.as_secs_f64());
        }
        let gap_kept = last_fault.is_none_or(|t| now >= t + MIN_GAP);
        if let Some(fault) = plan.faults.get(next)
            && elapsed >= fault.at
            && gap_kept
            // With no worker alive the fault waits for one.
            && let Some((injected, restore)) = fire(conn, cluster, fault, &id, elapsed).await?
        {
            eprintln!("  {}", describe(&injected, fault.kind.out_for()));
            restores.push((now + fault.kind.out_for(), restore));
            faults.push(injected);
            last_fault = Some(now);
            next += 1;
        }
        tokio::time::sleep(POLL).await;
    };
    // The job has ended: what is still out comes back now.
    let elapsed = submitted.elapsed();
    for (_, restore) in restores {
        apply(cluster, &restore, elapsed)?;
    }
    let (ending, error) = match hung {
        Some(why) => (Ending::Hung, Some(format!("hung: {why}"))),
        None => {
            let ending = Ending::Final(job.status);
            let error = job
                .error
                .filter(|_| !ending.succeeded())
                .map(|e| format!("{}: {}", e.code, e.message));
            (ending, error)
        }
    };
    let run = JobRun {
        mean_step_s: mean_step_time(conn, &id).await?,
        name: job.name,
        id,
        ending,
        error,
        wall_s,
        startup_s,
        attempts: job.attempt,
        failures: job.failures,
        faults,
        not_injected: plan.faults.len() - next,
        anomalies,
    };
    eprintln!(
        "job {} ({}) {} after {:.1} s (attempt {}, {} failure(s))",
        run.id, run.name, run.ending, run.wall_s, run.attempts, run.failures
    );
    Ok(run)
}

/// Asks for job `id` as it stands.
async fn get_job(conn: &Connection, id: &str) -> anyhow::Result<Job> {
    conn.status(id)
        .await
        .with_context(|| format!("cannot get job {id}"))
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

async fn list_workers(conn: &Connection) -> anyhow::Result<Vec<Worker>> {
    conn.list_workers().await.context("cannot list the workers")
}

/// Whether worker `name` (not lost) runs a rank of job `job`.
fn runs_job(workers: &[Worker], name: &str, job: &str) -> bool {
    workers.iter().any(|w| ranks_for(w, name, job))
}

/// The rank worker `name` (not lost) runs for job `job`, if it runs one.
fn rank_in(workers: &[Worker], name: &str, job: &str) -> Option<u32> {
    workers
        .iter()
        .filter(|w| ranks_for(w, name, job))
        .find_map(|w| w.rank)
}

/// Whether `w` is worker `name`, not lost, with a rank of job `job`.
fn ranks_for(w: &Worker, name: &str, job: &str) -> bool {
    w.name == name && w.state != WorkerState::Lost && w.job_id.as_deref() == Some(job)
}

/// The mean `step_time_s` of job `id`'s `train.step` events (every rank,
/// every attempt); `None` if it has none.
async fn mean_step_time(conn: &Connection, id: &str) -> anyhow::Result<Option<f64>> {
    let context = || format!("cannot read the events of job {id}");
    let mut events = conn.watch(id, 0, false).await.with_context(context)?;
    let (mut sum, mut count) = (0.0, 0u32);
    while let Some(event) = events.next().await {
        let event = event.with_context(context)?;
        if let Ok(JobEvent::TrainStep { metrics, .. }) =
            JobEvent::from_data(&event.kind, &event.data)
        {
            sum += metrics.step_time_s;
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
                        .any(|w| w.name == cluster.name(slot) && w.state == WorkerState::Idle)
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
