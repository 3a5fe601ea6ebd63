//! `GET /metrics` on a real coordinator and worker: the text is read by
//! Prometheus's own Python parser (`prometheus_client`, the interpreter
//! in LORAFLEET_PYTHON), and the figures match what the fleet did. Who may
//! scrape what: per-job series only with an operator's token or the
//! cluster token; without `--metrics-public` no token is 401 and a
//! tenant's token 403; with it both get the fleet-wide figures alone.

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::fleet::{CLUSTER_TOKEN, Fleet, short_spec, status, submit, text, wait_until};
use common::spec_in;
use serde_json::Value;

const OPERATOR: &str = "operator-token-for-metrics-0123";
const TENANT: &str = "tenant-token-for-metrics-01234";

/// A config with tenant `team-a` (storage: `dir`), operator `ops` and the
/// tests' cluster token.
fn config(dir: &Path) -> PathBuf {
    let hash = |t: &str| {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(t.as_bytes()))
    };
    let path = dir.join("coordinator.yaml");
    std::fs::write(
        &path,
        format!(
            "cluster_token_sha256: {}\noperators:\n  ops:\n    token_sha256: {}\ntenants:\n  team-a:\n    token_sha256: {}\n    storage: [{}]\n",
            hash(CLUSTER_TOKEN),
            hash(OPERATOR),
            hash(TENANT),
            dir.display(),
        ),
    )
    .unwrap();
    path
}

fn serve(dir: &Path, public: bool) -> Fleet {
    let config = config(dir);
    let mut args = vec![OsStr::new("--config"), config.as_os_str()];
    if public {
        args.push(OsStr::new("--metrics-public"));
    }
    Fleet::serve_with_args(
        &dir.join("state.db"),
        "127.0.0.1:0",
        TENANT,
        Vec::new(),
        &args,
    )
}

/// A scrape's answer.
struct Scrape {
    status: u16,
    content_type: String,
    body: String,
}

/// `GET /metrics` over HTTP/1.1 with `token` as the bearer.
fn scrape(fleet: &Fleet, token: Option<&str>) -> Scrape {
    let address = fleet.url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("the coordinator's port");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("a whole answer");
    let raw = String::from_utf8(raw).expect("a text answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head and a body");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    let headers: BTreeMap<String, String> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.to_ascii_lowercase(), value.trim().to_string()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v.contains("chunked"))
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Scrape {
        status,
        content_type: headers.get("content-type").cloned().unwrap_or_default(),
        body,
    }
}

/// A chunked HTTP/1.1 body, joined.
fn dechunk(mut rest: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, after) = rest.split_once("\r\n").expect("a chunk size line");
        let size = usize::from_str_radix(size.trim(), 16).expect("a hex chunk size");
        if size == 0 {
            return body;
        }
        body.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
}

/// One sample: its name, labels and value.
#[derive(Clone, Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// Families by name (as the Python parser names them: a counter without
/// `_total`), each with its type and samples.
type Families = BTreeMap<String, (String, Vec<Sample>)>;

const PARSER: &str = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
families = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    samples = []
    for s in family.samples:
        value = s.value if math.isfinite(s.value) else str(s.value)
        samples.append({"name": s.name, "labels": s.labels, "value": value})
    families[family.name] = {"type": family.type, "samples": samples}
print(json.dumps(families))
"#;

/// `exposition` read by Prometheus's Python parser.
fn parse(exposition: &str) -> Families {
    let python = std::env::var("LORAFLEET_PYTHON").expect(
        "LORAFLEET_PYTHON must name a Python with prometheus_client installed (scripts/test sets it up)",
    );
    let mut child = Command::new(&python)
        .args(["-c", PARSER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {python}: {e}"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the Prometheus parser refused the text: {}\n{exposition}",
        text(&out.stderr)
    );
    let parsed: BTreeMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
    parsed
        .into_iter()
        .map(|(name, family)| {
            let samples = family["samples"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| Sample {
                    name: s["name"].as_str().unwrap().to_string(),
                    labels: serde_json::from_value(s["labels"].clone()).unwrap(),
                    value: s["value"].as_f64().expect("a finite value"),
                })
                .collect();
            (
                name,
                (family["type"].as_str().unwrap().to_string(), samples),
            )
        })
        .collect()
}

/// The value of the sample `name` whose labels include `labels`, if one.
fn value(families: &Families, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    families
        .values()
        .flat_map(|(_, samples)| samples)
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}

/// Every sample that carries a `job_id` label.
fn per_job_samples(families: &Families) -> Vec<Sample> {
    families
        .values()
        .flat_map(|(_, samples)| samples)
        .filter(|s| s.labels.contains_key("job_id"))
        .cloned()
        .collect()
}

/// A histogram's `(le, cumulative count)` buckets per label set.
type Buckets = BTreeMap<Vec<(String, String)>, Vec<(f64, f64)>>;

/// Every histogram's buckets, per label set: cumulative counts that never
/// fall as `le` grows, ending with `+Inf` equal to `_count`.
fn assert_histograms_are_sound(families: &Families) {
    let mut histograms = 0;
    for (name, (kind, samples)) in families {
        if kind != "histogram" {
            continue;
        }
        histograms += 1;
        let mut series = Buckets::new();
        for s in samples.iter().filter(|s| s.name.ends_with("_bucket")) {
            let le: f64 = match s.labels["le"].as_str() {
                "+Inf" => f64::INFINITY,
                bound => bound.parse().unwrap(),
            };
            let key = s
                .labels
                .iter()
                .filter(|(k, _)| k.as_str() != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            series.entry(key).or_default().push((le, s.value));
        }
        for (labels, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert!(
                buckets.windows(2).all(|w| w[0].1 <= w[1].1),
                "{name}{labels:?}: buckets fall: {buckets:?}"
            );
            let (last_le, last) = *buckets.last().unwrap();
            assert_eq!(last_le, f64::INFINITY, "{name}{labels:?}: no +Inf bucket");
            let count = samples
                .iter()
                .find(|s| {
                    s.name == format!("{name}_count")
                        && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v))
                })
                .unwrap_or_else(|| panic!("{name}{labels:?}: no _count"));
            assert_eq!(last, count.value, "{name}{labels:?}: +Inf is not _count");
        }
    }
    assert!(
        histograms >= 3,
        "request and checkpoint histograms: {histograms}"
    );
}

#[test]
fn metrics_describe_a_fleet_that_ran_a_job() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut fleet = serve(dir, false);
    fleet.add_worker("w0");

    // Without --metrics-public: no token, a tenant's and a stranger's are
    // refused; the text is never shown.
    for (token, code) in [(None, 401), (Some(TENANT), 403), (Some("no-ones"), 401)] {
        let refused = scrape(&fleet, token);
        assert_eq!(refused.status, code, "{token:?}: {}", refused.body);
        assert!(!refused.body.contains("lorafleet_"), "{}", refused.body);
    }

    // Long enough to be seen running: 60 steps, a checkpoint every 20.
    let spec = spec_in(dir, "quickstart.yaml", |t| {
        t.replace("max_steps: 150", "max_steps: 60")
            .replace("threads_per_worker: 2", "threads_per_worker: 1")
            .replace("eval_every: 25", "eval_every: 5")
            .replace("every_steps: 50", "every_steps: 20")
            .replace(
                &format!("{}/quickstart/final", dir.join("runs").display()),
                dir.join("out").to_str().unwrap(),
            )
    });
    let id = submit(&fleet, &spec);

    // While it trains, the operator sees its progress, labelled with its
    // id, name and tenant.
    let start = Instant::now();
    let seen = loop {
        let families = parse(&scrape(&fleet, Some(OPERATOR)).body);
        let labels = [("job_id", id.as_str())];
        let step = value(&families, "lorafleet_job_step", &labels);
        let speed = value(&families, "lorafleet_job_tokens_per_second", &labels);
        if step.is_some_and(|s| s >= 1.0) && speed.is_some() {
            break families;
        }
        let job = status(&fleet, &id);
        assert!(
            !matches!(job["status"].as_str(), Some("succeeded" | "failed")),
            "the job ended before a scrape saw it train: {job}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "the job never trained"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let labels = [
        ("job_id", id.as_str()),
        ("job_name", "quickstart"),
        ("tenant", "team-a"),
    ];
    assert!(value(&seen, "lorafleet_job_tokens_per_second", &labels).unwrap() > 0.0);
    assert_eq!(
        value(&seen, "lorafleet_job_total_steps", &labels),
        Some(60.0)
    );
    assert!(value(&seen, "lorafleet_job_train_loss", &labels).unwrap() > 0.0);
    assert!(value(&seen, "lorafleet_job_step_duration_seconds", &labels).unwrap() > 0.0);
    assert!(value(&seen, "lorafleet_job_trained_tokens_total", &labels).unwrap() > 0.0);
    assert!(
        value(&seen, "lorafleet_jobs", &[("status", "running")]).unwrap()
            + value(&seen, "lorafleet_jobs", &[("status", "starting")]).unwrap()
            >= 1.0
    );
    assert_eq!(
        value(&seen, "lorafleet_workers", &[("state", "busy")]),
        Some(1.0)
    );

    wait_until(Duration::from_secs(180), "the job to succeed", || {
        status(&fleet, &id)["status"] == "succeeded"
    });
    // The worker reports itself idle on its next heartbeat.
    let mut families = Families::new();
    wait_until(Duration::from_secs(30), "the worker to be idle", || {
        families = parse(&scrape(&fleet, Some(OPERATOR)).body);
        value(&families, "lorafleet_workers", &[("state", "idle")]) == Some(1.0)
    });
    let operator = scrape(&fleet, Some(OPERATOR));
    assert_eq!(operator.status, 200, "{}", operator.body);
    assert!(
        operator
            .content_type
            .starts_with("text/plain; version=0.0.4"),
        "{}",
        operator.content_type
    );
    let families = parse(&operator.body);

    let jobs = |status| value(&families, "lorafleet_jobs", &[("status", status)]).unwrap();
    assert!(jobs("succeeded") >= 1.0);
    for other in [
        "queued",
        "starting",
        "running",
        "restarting",
        "failed",
        "cancelled",
    ] {
        assert_eq!(jobs(other), 0.0, "{other}");
    }
    assert_eq!(value(&families, "lorafleet_jobs_waiting", &[]), Some(0.0));
    for (state, count) in [
        ("idle", 1.0),
        ("busy", 0.0),
        ("draining", 0.0),
        ("lost", 0.0),
    ] {
        assert_eq!(
            value(&families, "lorafleet_workers", &[("state", state)]),
            Some(count),
            "{state}"
        );
    }
    assert_eq!(
        value(&families, "lorafleet_workers_connected", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&families, "lorafleet_job_attempts_started_total", &[]),
        Some(1.0)
    );
    assert_eq!(
        value(&families, "lorafleet_job_restarts_total", &[]),
        Some(0.0)
    );
    assert!(value(&families, "lorafleet_trained_tokens_total", &[]).unwrap() > 0.0);
    // Steps 20, 40 and 60 were committed.
    assert!(value(&families, "lorafleet_checkpoint_uploaded_bytes_total", &[]).unwrap() > 0.0);
    assert_eq!(
        value(
            &families,
            "lorafleet_checkpoint_upload_duration_seconds_count",
            &[]
        ),
        Some(3.0)
    );
    assert_eq!(
        families["lorafleet_checkpoint_upload_duration_seconds"].0,
        "histogram"
    );
    assert_eq!(families["lorafleet_grpc_requests"].0, "counter");

    // Requests, by method and route pattern.
    let submits = [
        ("service", "lorafleet.v1.Jobs"),
        ("method", "Submit"),
        ("code", "OK"),
    ];
    assert_eq!(
        value(&families, "lorafleet_grpc_requests_total", &submits),
        Some(1.0)
    );
    assert_eq!(
        value(
            &families,
            "lorafleet_grpc_request_duration_seconds_count",
            &submits
        ),
        Some(1.0)
    );
    let registered = [
        ("service", "lorafleet.v1.Workers"),
        ("method", "Register"),
        ("code", "OK"),
    ];
    assert!(value(&families, "lorafleet_grpc_requests_total", &registered).unwrap() >= 1.0);
    let reports = [("method", "ReportEvents"), ("code", "OK")];
    assert!(value(&families, "lorafleet_grpc_requests_total", &reports).unwrap() >= 1.0);
    for (code, least) in [("401", 2.0), ("403", 1.0), ("200", 2.0)] {
        let labels = [("method", "GET"), ("route", "/metrics"), ("code", code)];
        let count = value(&families, "lorafleet_http_requests_total", &labels)
            .unwrap_or_else(|| panic!("no /metrics {code} count"));
        assert!(count >= least, "/metrics {code}: {count}");
        assert_eq!(
            value(
                &families,
                "lorafleet_http_request_duration_seconds_count",
                &labels
            ),
            Some(count)
        );
    }
    assert_histograms_are_sound(&families);
    // The job is over: no series of its own remains.
    assert!(per_job_samples(&families).is_empty());

    // The cluster token (what a cluster's Prometheus is given) sees the
    // same.
    let cluster = scrape(&fleet, Some(CLUSTER_TOKEN));
    assert_eq!(cluster.status, 200, "{}", cluster.body);
    assert!(parse(&cluster.body).contains_key("lorafleet_jobs"));
}

#[test]
fn public_metrics_show_fleet_figures_and_no_tenant_data() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // No worker: the job stays queued.
    let fleet = serve(dir, true);
    let id = submit(&fleet, &short_spec(dir, "queued", 1, &dir.join("out")));

    for token in [None, Some(TENANT)] {
        let scraped = scrape(&fleet, token);
        assert_eq!(scraped.status, 200, "{token:?}: {}", scraped.body);
        let families = parse(&scraped.body);
        assert_eq!(
            value(&families, "lorafleet_jobs", &[("status", "queued")]),
            Some(1.0),
            "{token:?}"
        );
        assert_eq!(value(&families, "lorafleet_jobs_waiting", &[]), Some(1.0));
        assert!(
            families.contains_key("lorafleet_grpc_requests"),
            "{token:?}"
        );
        assert!(
            per_job_samples(&families).is_empty(),
            "{token:?} sees a job's series"
        );
        assert!(!scraped.body.contains(&id), "{token:?} sees the job's id");
        assert!(
            !scraped.body.contains("team-a"),
            "{token:?} sees the tenant"
        );
    }
    assert_eq!(scrape(&fleet, Some("no-ones")).status, 401);

    let families = parse(&scrape(&fleet, Some(OPERATOR)).body);
    let labels = [("job_id", id.as_str()), ("tenant", "team-a")];
    assert_eq!(value(&families, "lorafleet_job_step", &labels), Some(0.0));
    assert_eq!(
        value(&families, "lorafleet_job_total_steps", &labels),
        Some(20.0)
    );
    // Nothing reported yet: no loss or speed series.
    assert_eq!(value(&families, "lorafleet_job_train_loss", &labels), None);
    assert_eq!(
        value(&families, "lorafleet_job_tokens_per_second", &labels),
        None
    );
}
