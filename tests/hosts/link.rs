//! The link measurement of docs/PERFORMANCE.md: a 2-rank job between two
//! worker hosts, undisturbed and then with each worker's link limited to
//! 100 Mbit/s (tc tbf on what it sends) and delayed on what it receives
//! (10 ms, then 20 ms each way: round trips of 20 and 40 ms). It prints
//! the mean step time of each, the bytes a worker's interface sends per
//! step while the job runs (the ring's share of which is
//! 2·(N−1)/N × the adapter's f32 bytes), and how long that takes at the
//! link's rate. Runs only with `LORAFLEET_HOSTS_LINK=1` (a minute of
//! measuring that asserts little); otherwise it says so and passes.
//!
//! ```sh
//! LORAFLEET_HOSTS_LINK=1 cargo test --test hosts link -- --nocapture
//! ```

use std::time::Duration;

use crate::common::adapter;
use crate::fleet::{COORD, HostFleet};
use crate::job::{JobInputs, STEPS, events, prepare_remote_inputs, write_spec};

/// The link's rate, in Mbit/s.
const RATE_MBIT: u32 = 100;
/// Steps not counted in the mean (start-up, first all-reduces).
const WARM_UP_STEPS: u64 = 5;

#[test]
fn link_step_time_under_a_100_mbit_link_with_delay() {
    if std::env::var_os("LORAFLEET_HOSTS_LINK").is_none() {
        eprintln!("skipped: set LORAFLEET_HOSTS_LINK=1 to measure step time under a shaped link");
        return;
    }
    let _turn = crate::one_lab_at_a_time();
    let Some(fleet) = HostFleet::start(2) else {
        return;
    };
    let inputs = prepare_remote_inputs(&fleet);
    let mut rows = vec![(
        "no shaping".to_string(),
        measure(&fleet, &inputs, "link-plain"),
    )];
    for one_way_ms in [10u64, 20] {
        // Each host delays what it receives: the round trip is twice that.
        for worker in ["w1", "w2"] {
            fleet
                .lab
                .shape(worker, RATE_MBIT, Duration::from_millis(one_way_ms));
        }
        let name = format!("link-rtt{}", 2 * one_way_ms);
        let what = format!("{RATE_MBIT} Mbit/s, {} ms round trip", 2 * one_way_ms);
        rows.push((what, measure(&fleet, &inputs, &name)));
    }
    for (what, m) in &rows {
        eprintln!(
            "{what}: {:.1} ms per step (median {:.1} ms); a worker sends {:.0} KB per step, \
             the ring's share {:.0} KB ({:.1} ms at {RATE_MBIT} Mbit/s)",
            m.mean_step_s * 1e3,
            m.median_step_s * 1e3,
            m.sent_per_step / 1e3,
            m.ring_bytes_per_step / 1e3,
            m.ring_bytes_per_step * 8.0 / (f64::from(RATE_MBIT) * 1e6) * 1e3,
        );
    }
}

/// What one job measured.
#[derive(Debug, Clone, Copy)]
struct Measured {
    mean_step_s: f64,
    median_step_s: f64,
    /// Bytes worker w1's interface sent per step while the job ran.
    sent_per_step: f64,
    /// 2·(N−1)/N × the adapter's f32 bytes, N = 2.
    ring_bytes_per_step: f64,
}

fn measure(fleet: &HostFleet, inputs: &JobInputs, name: &str) -> Measured {
    let dir = fleet.lab.host(COORD).private_dir().to_path_buf();
    let storage = fleet.s3.url(&format!("checkpoints/{name}"));
    let spec = write_spec(&dir, name, inputs, &storage, 2, None);
    // One checkpoint, at the end: the interface then carries the ring, the
    // heartbeats and the events.
    let text = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(
        &spec,
        text.replace("every_steps: 5", &format!("every_steps: {STEPS}")),
    )
    .unwrap();
    let job = fleet.json(&["submit", spec.to_str().unwrap()]);
    let id = job["id"].as_str().unwrap().to_string();
    let mut first: Option<(u64, u64)> = None;
    let mut last: Option<(u64, u64)> = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    loop {
        let status = fleet.json(&["status", &id]);
        let step = status["step"].as_u64().unwrap_or(0);
        if status["status"] == "running" && (WARM_UP_STEPS..STEPS - 2).contains(&step) {
            let (sent, _) = fleet.lab.interface_bytes("w1");
            if first.is_none() {
                first = Some((step, sent));
            }
            last = Some((step, sent));
        }
        if ["succeeded", "failed", "cancelled"].contains(&status["status"].as_str().unwrap()) {
            assert_eq!(
                status["status"],
                "succeeded",
                "{status}\n{}",
                fleet.log_tails()
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} ran past 300 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let mut step_times: Vec<f64> = events(fleet, &id)
        .iter()
        .filter(|e| e["type"] == "train.step")
        .filter(|e| e["data"]["step"].as_u64().unwrap_or(0) > WARM_UP_STEPS)
        .filter_map(|e| e["data"]["step_time_s"].as_f64())
        .collect();
    assert!(!step_times.is_empty(), "{name}: no train.step events");
    step_times.sort_by(f64::total_cmp);
    let mean_step_s = step_times.iter().sum::<f64>() / step_times.len() as f64;
    let median_step_s = step_times[step_times.len() / 2];
    let (first, last) = (first.unwrap(), last.unwrap());
    let sent_per_step = (last.1 - first.1) as f64 / (last.0 - first.0).max(1) as f64;
    let download = dir.join(format!("download-{name}"));
    fleet.json(&["download", &id, "-o", download.to_str().unwrap()]);
    let adapter_bytes: usize = adapter(&download).iter().map(|(_, v)| v.len() * 4).sum();
    Measured {
        mean_step_s,
        median_step_s,
        sent_per_step,
        ring_bytes_per_step: adapter_bytes as f64,
    }
}
