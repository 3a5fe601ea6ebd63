//! Hostile workers holding the cluster token: registering under another
//! worker's id, forging its events and heartbeats, and what a rank process
//! inherits.

use std::time::Duration;

use coordinator::api;
use tokio_stream::StreamExt;
use tonic::Code;

use crate::common::fleet::{CLUSTER_TOKEN, text, wait_until};
use crate::lab::{Lab, OPERATOR, TOKEN_A, spec};

#[test]
fn the_cluster_token_alone_cannot_take_over_or_speak_for_another_worker() {
    let mut lab = Lab::start();
    let marker = format!("workers-attack-{}", std::process::id());
    lab.fleet
        .env
        .push(("LORAFLEET_TEST_MARKER".into(), marker.clone()));
    lab.fleet.add_worker("victim");
    let workers = |lab: &Lab| lab.workers(OPERATOR);
    wait_until(Duration::from_secs(30), "the victim to join", || {
        workers(&lab).len() == 1
    });
    let victim = workers(&lab)[0]["id"].as_str().unwrap().to_string();
    let runs = lab.a.join("runs").display().to_string();
    let data = lab.a.join("secret.jsonl").display().to_string();
    let job = lab.submit(TOKEN_A, &spec(&data, &runs, 100_000)).unwrap();
    let status = |lab: &Lab| {
        let out = lab.fleet.cli(Some(TOKEN_A), &["status", &job.id, "--json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    wait_until(Duration::from_secs(60), "the job to run", || {
        status(&lab)["status"] == "running"
    });
    let attempt = status(&lab)["attempt"].as_u64().unwrap() as u32;

    let attacker = lab.connect(CLUSTER_TOKEN);
    let rt = &lab.runtime;
    let register = |id: &str, secret: &str| api::RegisterRequest {
        name: "attacker".into(),
        host: "127.0.0.1".into(),
        backend: api::Backend::Cpu.into(),
        version: coordinator::PROTOCOL_VERSION.into(),
        ring_addr: "127.0.0.1:9".into(),
        worker_id: id.into(),
        worker_secret: secret.into(),
        ..Default::default()
    };
    // 1. Registering under the victim's id, without or with a made-up secret.
    for secret in ["", "0123456789abcdef", CLUSTER_TOKEN] {
        let refused = rt
            .block_on(attacker.workers().register(register(&victim, secret)))
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("session secret"), "{refused:?}");
    }
    // The attacker may register as itself, and gets a secret of its own.
    let own = rt
        .block_on(attacker.workers().register(register("", "")))
        .unwrap()
        .into_inner();
    assert_ne!(own.worker_id, victim);
    assert!(own.worker_secret.len() >= 32);

    // 2. A heartbeat stream in the victim's name, with the attacker's secret:
    //    it would take the victim's orders and report its job finished.
    let forged = api::WorkerReport {
        worker_id: victim.clone(),
        job_id: job.id.clone(),
        attempt,
        state: api::RankState::Finished.into(),
        worker_secret: own.worker_secret.clone(),
        ..Default::default()
    };
    let stream = tokio_stream::iter(vec![forged]);
    let refused = rt
        .block_on(attacker.workers().heartbeat(stream))
        .map(|_| ())
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // 3. Events in the victim's name (a checkpoint far past the end, a
    //    finished job), with a wrong secret; then in the attacker's own
    //    name for the victim's attempt.
    let forged_events = |worker: &str, secret: &str| api::ReportEventsRequest {
        worker_id: worker.into(),
        job_id: job.id.clone(),
        attempt,
        events: vec![api::Event {
            level: "info".into(),
            r#type: "checkpoint.saved".into(),
            message: "forged".into(),
            data_json: r#"{"step":999999,"path":"/etc"}"#.into(),
            ..Default::default()
        }],
        worker_secret: secret.into(),
        ..Default::default()
    };
    for (worker, secret) in [
        (victim.as_str(), ""),
        (victim.as_str(), own.worker_secret.as_str()),
        (own.worker_id.as_str(), own.worker_secret.as_str()),
    ] {
        let refused = rt
            .block_on(
                attacker
                    .workers()
                    .report_events(forged_events(worker, secret)),
            )
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{worker}: {refused:?}"
        );
    }
    // 4. Fetching the job's inputs (the tenant's uploads) as a worker
    //    that is no rank of it, or in the victim's name without its secret.
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&data).unwrap()))
    };
    for (worker, secret, code) in [
        (
            own.worker_id.as_str(),
            own.worker_secret.as_str(),
            Code::PermissionDenied,
        ),
        (
            victim.as_str(),
            own.worker_secret.as_str(),
            Code::PermissionDenied,
        ),
    ] {
        let fetch = api::FetchInputRequest {
            worker_id: worker.into(),
            worker_secret: secret.into(),
            job_id: job.id.clone(),
            attempt,
            sha256: sha.clone(),
        };
        let refused = rt
            .block_on(attacker.workers().fetch_input(fetch))
            .map(|_| ())
            .unwrap_err();
        assert_eq!(refused.code(), code, "{worker}: {refused:?}");
    }
    // The attacker's own heartbeat claiming the victim's job finished
    // changes nothing.
    let claim = api::WorkerReport {
        worker_id: own.worker_id.clone(),
        job_id: job.id.clone(),
        attempt,
        state: api::RankState::Finished.into(),
        worker_secret: own.worker_secret.clone(),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    rt.block_on(tx.send(claim)).unwrap();
    let mut orders = rt
        .block_on(
            attacker
                .workers()
                .heartbeat(tokio_stream::wrappers::ReceiverStream::new(rx)),
        )
        .unwrap()
        .into_inner();
    let _ =
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(2), orders.next()).await });

    // The job still runs on the victim, which is still connected, and no
    // forged checkpoint was recorded.
    let now = status(&lab);
    assert_eq!(now["status"], "running", "{now}");
    let listed = workers(&lab);
    let victim_now = listed.iter().find(|w| w["id"] == victim.as_str()).unwrap();
    assert_eq!(victim_now["state"], "busy", "{victim_now}");
    assert_eq!(victim_now["job_id"], job.id.as_str());
    let out = lab
        .fleet
        .cli(Some(TOKEN_A), &["checkpoints", &job.id, "--json"]);
    assert!(
        !text(&out.stdout).contains("999999"),
        "{}",
        text(&out.stdout)
    );

    // 4. The rank process holds no coordinator credential.
    let ranks: Vec<u32> = crate::common::fleet::processes_with(&marker)
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == b"train"))
                .unwrap_or(false)
        })
        .collect();
    assert!(!ranks.is_empty(), "the job's rank process is running");
    for pid in ranks {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        for name in ["LORAFLEET_CLUSTER_TOKEN=", "LORAFLEET_TOKEN="] {
            assert!(
                !environ
                    .split(|b| *b == 0)
                    .any(|v| v.starts_with(name.as_bytes())),
                "rank {pid} inherited {name}"
            );
        }
    }
    let out = lab.fleet.cli(Some(TOKEN_A), &["cancel", &job.id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
