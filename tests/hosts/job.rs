//! The job every hosts test runs, and what the tests read about it.
//!
//! One spec: a tiny random Llama written by `init-model` and the
//! quickstart dataset, both on the submitting host (`coord`, whose folder
//! no worker sees: `submit` uploads them and workers fetch them from the
//! coordinator), checkpoints every [`CHECKPOINT_EVERY`] steps on the lab's S3
//! server. [`reference_adapter`] is what one `lorafleet train` process
//! makes of the same spec (once per test process); [`undisturbed`]
//! how long the job takes on the fleet undisturbed, and its step time. [`JobWatch`] polls a
//! job until it ends and keeps what it saw (attempts, steps, times).
//!
//! Not here: starting the fleet (`fleet`), injecting faults (the tests).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::common::{adapter, fleet::text, max_relative_difference, repo};
use crate::fleet::{COORD, HostFleet};

/// An adapter's tensors by name.
type Tensors = Vec<(String, Vec<f32>)>;

pub const STEPS: u64 = 60;
pub const CHECKPOINT_EVERY: u64 = 5;
/// The largest relative deviation from the 1-process adapter accepted.
pub const TOLERANCE: f64 = 1e-4;

/// Where a job's inputs are, as its spec names them.
pub struct JobInputs {
    /// A model folder; `None`: the `tiny` preset.
    pub model: Option<PathBuf>,
    pub dataset: String,
}

/// Writes the model and dataset into the submitting host's own folder,
/// where only `submit` reads them.
pub fn prepare_inputs(fleet: &HostFleet) -> JobInputs {
    let folder = fleet.lab.host(COORD).private_dir();
    let model = folder.join("model");
    let mut init = std::process::Command::new(env!("CARGO_BIN_EXE_lorafleet"));
    init.args(["init-model", "--preset", "tiny", "--seed", "3", "-o"])
        .arg(&model);
    let out = output_within(init, Duration::from_secs(60));
    assert!(out.status.success(), "init-model: {}", text(&out.stderr));
    let dataset = folder.join("train.jsonl");
    std::fs::copy(repo("examples/data/quickstart-train.jsonl"), &dataset).unwrap();
    JobInputs {
        model: Some(model),
        dataset: dataset.display().to_string(),
    }
}

/// Inputs that need no upload: the `tiny` preset and the dataset on the
/// S3 server (for measurements that must not depend on uploads).
pub fn prepare_remote_inputs(fleet: &HostFleet) -> JobInputs {
    let data = std::fs::read(repo("examples/data/quickstart-train.jsonl")).unwrap();
    let store = fleet.s3.store();
    let key = "inputs/train.jsonl";
    fleet.lab.within(crate::fleet::STORAGE, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime
            .block_on(object_store::ObjectStoreExt::put(
                store.as_ref(),
                &object_store::path::Path::from(key),
                data.into(),
            ))
            .expect("the dataset uploads to S3");
    });
    JobInputs {
        model: None,
        dataset: fleet.s3.url(key),
    }
}

/// A spec for `workers` ranks training on `inputs`, checkpointing to
/// `storage`; written to `dir/NAME.yaml`.
pub fn write_spec(
    dir: &Path,
    name: &str,
    inputs: &JobInputs,
    storage: &str,
    workers: u32,
    output: Option<&Path>,
) -> PathBuf {
    let output = output
        .map(|o| format!("output:\n  dir: {}\n", o.display()))
        .unwrap_or_default();
    let yaml = format!(
        "name: {name}\nmodel:\n  {model}\ndataset:\n  train: {dataset}\n  max_seq_len: 128\n\
         lora:\n  r: 8\n  alpha: 16\n  target_modules: all-linear\n\
         training:\n  max_steps: {STEPS}\n  global_batch_size: 8\n  micro_batch_size: 4\n  learning_rate: 1.0e-3\n  seed: 5\n\
         resources:\n  workers: {workers}\n  threads_per_worker: 1\n\
         checkpoint:\n  every_steps: {CHECKPOINT_EVERY}\n  keep_last: 3\n  max_failures: 6\n  storage: {storage}\n{output}",
        model = inputs
            .model
            .as_ref()
            .map_or("preset: tiny".to_string(), |m| format!(
                "path: {}",
                m.display()
            )),
        dataset = inputs.dataset,
    );
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The adapter one `lorafleet train` process trains from the job's spec
/// (local dataset, local checkpoints); computed once per test process.
pub fn reference_adapter(fleet: &HostFleet) -> &'static [(String, Vec<f32>)] {
    static REFERENCE: OnceLock<(tempfile::TempDir, Tensors)> = OnceLock::new();
    let model = fleet.lab.host(COORD).private_dir().join("model");
    &REFERENCE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let inputs = JobInputs {
                model: Some(dir.path().join("model")),
                dataset: repo("examples/data/quickstart-train.jsonl")
                    .display()
                    .to_string(),
            };
            copy_dir(&model, inputs.model.as_ref().unwrap());
            let output = dir.path().join("adapter");
            let storage = dir.path().join("checkpoints");
            let spec = write_spec(
                dir.path(),
                "reference",
                &inputs,
                storage.to_str().unwrap(),
                1,
                Some(&output),
            );
            let mut train = std::process::Command::new(env!("CARGO_BIN_EXE_lorafleet"));
            train.args(["train", spec.to_str().unwrap()]);
            let out = output_within(train, Duration::from_secs(300));
            assert!(out.status.success(), "train: {}", text(&out.stderr));
            let tensors = adapter(&output);
            (dir, tensors)
        })
        .1
}

/// Downloads job `job`'s latest checkpoint on `coord` and returns its
/// largest relative deviation from the 1-process adapter; the checkpoint
/// must be the last step's.
pub fn deviation_from_reference(fleet: &HostFleet, job: &str) -> f64 {
    let dir = fleet
        .lab
        .host(COORD)
        .private_dir()
        .join(format!("download-{job}"));
    let got = fleet.json(&["download", job, "-o", dir.to_str().unwrap()]);
    assert_eq!(
        got["step"], STEPS,
        "the latest checkpoint is the last step's: {got}"
    );
    max_relative_difference(&adapter(&dir), reference_adapter(fleet))
}

/// What the undisturbed job measured.
#[derive(Debug, Clone, Copy)]
pub struct Baseline {
    pub wall: Duration,
    /// The median `step_time_s` of its `train.step` events.
    pub step_s: f64,
}

impl Baseline {
    /// The wall time the undisturbed job would have taken at the pace of
    /// job `job` (the machine is shared: a job whose steps ran slower is
    /// judged against the baseline slowed as much). Medians, so that the
    /// few steps a fault stalls do not count as pace.
    pub fn wall_at_pace_of(&self, fleet: &HostFleet, job: &str) -> Duration {
        let pace = step_time(fleet, job).map_or(1.0, |s| (s / self.step_s).max(1.0));
        self.wall.mul_f64(pace)
    }
}

/// How the job goes on this kind of fleet undisturbed with `ranks` ranks
/// (measured once per test process and rank count, on the first fleet
/// that asks).
pub fn undisturbed(fleet: &HostFleet, inputs: &JobInputs, ranks: u32) -> Baseline {
    static BASELINES: Mutex<BTreeMap<u32, Baseline>> = Mutex::new(BTreeMap::new());
    if let Some(baseline) = BASELINES.lock().unwrap().get(&ranks) {
        return *baseline;
    }
    let name = format!("undisturbed-{ranks}");
    let watch = run_job(fleet, inputs, &name, ranks, |_| {});
    assert_eq!(watch.status, "succeeded", "{}", fleet.log_tails());
    let baseline = Baseline {
        wall: watch.wall,
        step_s: step_time(fleet, &watch.id).expect("the job reported its steps"),
    };
    BASELINES.lock().unwrap().insert(ranks, baseline);
    baseline
}

/// The median `step_time_s` of job `job`'s `train.step` events.
pub fn step_time(fleet: &HostFleet, job: &str) -> Option<f64> {
    let mut times: Vec<f64> = events(fleet, job)
        .iter()
        .filter(|e| e["type"] == "train.step")
        .filter_map(|e| e["data"]["step_time_s"].as_f64())
        .collect();
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied()
}

/// What a test saw of one job.
#[derive(Debug, Default)]
pub struct JobWatch {
    pub id: String,
    pub status: String,
    pub attempt: u64,
    pub failures: u64,
    pub wall: Duration,
    /// Time since submit of the latest poll.
    pub last_poll: Duration,
    /// When it was submitted.
    pub submitted_at: Option<std::time::SystemTime>,
    /// When the job was first seen at each attempt number.
    pub attempt_seen: Vec<(u64, Duration)>,
    /// (time since submit, step) of each poll while running.
    pub steps: Vec<(Duration, u64)>,
    /// Every poll as (time since submit when it was sent, when its answer
    /// came): the state it shows was read somewhere in between.
    pub polls: Vec<(Duration, Duration)>,
}

impl JobWatch {
    /// When the last poll answered before `at` was sent: what it showed
    /// had not yet changed into what was seen at `at`, so the change came
    /// after this time (the answer itself may lag the read by a loaded
    /// machine's process start, so the send time is the safe bound).
    pub fn poll_before(&self, at: Duration) -> Option<Duration> {
        self.polls
            .iter()
            .rev()
            .find(|(_, answered)| *answered < at)
            .map(|(sent, _)| *sent)
    }

    /// The highest step seen running by `since_submit`.
    pub fn step_at(&self, since_submit: Duration) -> u64 {
        self.steps
            .iter()
            .take_while(|(t, _)| *t <= since_submit)
            .map(|(_, s)| *s)
            .max()
            .unwrap_or(0)
    }
}

/// Submits the job's spec as `name` for `workers` ranks and polls it until
/// it ends (at most 4 minutes); `each_poll` runs after every poll, with
/// what has been seen so far (faults are injected from there).
pub fn run_job(
    fleet: &HostFleet,
    inputs: &JobInputs,
    name: &str,
    workers: u32,
    mut each_poll: impl FnMut(&JobWatch),
) -> JobWatch {
    let dir = fleet.lab.host(COORD).private_dir().to_path_buf();
    let storage = fleet.s3.url(&format!("checkpoints/{name}"));
    let spec = write_spec(&dir, name, inputs, &storage, workers, None);
    let submitted = Instant::now();
    let submitted_at = std::time::SystemTime::now();
    let job = fleet.json(&["submit", spec.to_str().unwrap()]);
    let mut watch = JobWatch {
        id: job["id"].as_str().unwrap().to_string(),
        submitted_at: Some(submitted_at),
        ..JobWatch::default()
    };
    let limit = Duration::from_secs(240);
    loop {
        let sent = submitted.elapsed();
        let status = fleet.json(&["status", &watch.id]);
        let now = submitted.elapsed();
        watch.last_poll = now;
        watch.polls.push((sent, now));
        watch.status = status["status"].as_str().unwrap_or_default().to_string();
        watch.attempt = status["attempt"].as_u64().unwrap_or(0);
        watch.failures = status["failures"].as_u64().unwrap_or(0);
        if watch.attempt_seen.last().map(|(a, _)| *a) != Some(watch.attempt) {
            watch.attempt_seen.push((watch.attempt, now));
        }
        if watch.status == "running" {
            watch
                .steps
                .push((now, status["step"].as_u64().unwrap_or(0)));
        }
        if ["succeeded", "failed", "cancelled"].contains(&watch.status.as_str()) {
            watch.wall = now;
            return watch;
        }
        assert!(
            now < limit,
            "job {name} did not end within {limit:?}: {status}\n{}",
            fleet.log_tails()
        );
        each_poll(&watch);
        std::thread::sleep(Duration::from_millis(150));
    }
}

/// Job `job`'s events, as `logs --json` prints them.
pub fn events(fleet: &HostFleet, job: &str) -> Vec<serde_json::Value> {
    let out = fleet.client(&["logs", job, "--json"]);
    assert!(out.status.success(), "logs: {}", text(&out.stderr));
    text(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The messages of job `job`'s starts, failures and restarts, one a line
/// (what a failing test shows).
pub fn story(fleet: &HostFleet, job: &str) -> String {
    events(fleet, job)
        .iter()
        .filter(|e| {
            let kind = e["type"].as_str().unwrap_or_default();
            kind.starts_with("job.") || kind == "rank.failed" || kind == "worker.lost"
        })
        .map(|e| format!("  {}: {}", e["type"], e["message"]))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The worker names of each attempt, from the `job.starting` events.
pub fn attempt_workers(fleet: &HostFleet, job: &str) -> Vec<Vec<String>> {
    let names: Vec<(String, String)> = fleet
        .workers()
        .iter()
        .map(|w| {
            (
                w["id"].as_str().unwrap_or_default().to_string(),
                w["name"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    events(fleet, job)
        .iter()
        .filter(|e| e["type"] == "job.starting")
        .map(|e| {
            e["data"]["workers"]
                .as_array()
                .map(|ws| {
                    ws.iter()
                        .map(|w| {
                            let id = w.as_str().unwrap_or_default();
                            names
                                .iter()
                                .find(|(i, _)| i == id)
                                .map_or(id.to_string(), |(_, n)| n.clone())
                        })
                        .collect()
                })
                .unwrap_or_default()
        })
        .collect()
}

/// Runs `command` to its end with its output captured; killed and a panic
/// after `limit`.
fn output_within(mut command: std::process::Command, limit: Duration) -> std::process::Output {
    let child = command
        .env("RUST_BACKTRACE", "0")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the binary runs");
    let pid = child.id();
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(limit) {
        Ok(output) => output.expect("the binary runs"),
        Err(_) => {
            // SAFETY: kill(2) on our child, which the waiting thread has
            // not reaped (it has not exited).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{command:?} ran past {limit:?}");
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// One committed checkpoint as storage holds it.
#[derive(Debug)]
pub struct StoredManifest {
    pub step: u64,
    /// When storage last wrote it.
    pub written: std::time::SystemTime,
    /// Who signed it ("job ID attempt N").
    pub writer: String,
}

/// The manifests under `checkpoints/NAME` in the fleet's storage.
pub fn manifests(fleet: &HostFleet, name: &str) -> Vec<StoredManifest> {
    let store = fleet.s3.store();
    let prefix = object_store::path::Path::from(format!("checkpoints/{name}"));
    fleet.lab.within(crate::fleet::STORAGE, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            use futures::TryStreamExt;
            let listed: Vec<object_store::ObjectMeta> = store
                .list(Some(&prefix))
                .try_collect()
                .await
                .unwrap_or_default();
            let mut found = Vec::new();
            for meta in listed {
                if meta.location.filename() != Some("MANIFEST.json") {
                    continue;
                }
                let Some(step) = meta
                    .location
                    .parts()
                    .find_map(|p| p.as_ref().strip_prefix("step-")?.parse().ok())
                else {
                    continue;
                };
                let got = object_store::ObjectStoreExt::get(store.as_ref(), &meta.location).await;
                let body = match got {
                    Ok(got) => got.bytes().await.unwrap_or_default(),
                    Err(_) => continue,
                };
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                found.push(StoredManifest {
                    step,
                    written: std::time::SystemTime::from(meta.last_modified),
                    writer: json["writer"].as_str().unwrap_or_default().to_string(),
                });
            }
            found
        })
    })
}
