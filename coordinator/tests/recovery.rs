//! Jobs that outlive their workers, with simulated workers (see `common`):
//! a lost worker restarts its job, `max_failures` is exact with a backoff
//! between attempts, a drained worker hands its job on without a failure,
//! and an elastic job shrinks when a worker is lost and grows back when one
//! returns; a checkpoint whose event was lost is found in storage (also
//! one committed after its attempt ended, which the next resumes from), a
//! batch of events sent twice is stored once, and a worker cannot report
//! the coordinator's own events.

mod common;

use common::*;

/// The events of `kind` job `id` logged so far.
async fn events_of(jobs: &mut JobsApi, id: &str, kind: &str) -> Vec<api::JobEvent> {
    let watch = api::WatchRequest {
        job_id: id.to_string(),
        after_id: 0,
        follow: false,
    };
    let mut events = jobs.watch_events(watch).await.unwrap().into_inner();
    let mut found = Vec::new();
    let replay = timeout(WAIT, async {
        while let Some(event) = events.next().await {
            found.extend(Some(event.unwrap()).filter(|e| e.r#type == kind));
        }
    });
    replay.await.expect("a replay without follow ends");
    found
}

fn data(event: &api::JobEvent) -> serde_json::Value {
    serde_json::from_str(&event.data_json).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_worker_restarts_its_job() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let mut worker = SimWorker::join(&tc, "", "fragile").await;
    let job = tc.job(&mut jobs, "fragile", 1, 0).await;
    let a = worker.next_assignment().await;
    worker.report(&a, "running").await;
    worker.step_event(&a, 1, 2).await;
    wait_status(&mut jobs, &job.id, "running").await;

    // Its heartbeat stream ends (the process died).
    let (id, secret) = (worker.id.clone(), worker.secret.clone());
    drop(worker);
    let restarting = wait_status(&mut jobs, &job.id, "restarting").await;
    assert_eq!(restarting.failures, 1);
    let error = restarting.error.unwrap();
    assert!(error.message.contains("disconnected"), "{error:?}");

    let lost = events_of(&mut jobs, &job.id, "worker.lost").await;
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!(level(&lost[0]), "warn");
    assert!(lost[0].data_json.contains(&id), "{:?}", lost[0]);

    // It comes back under its old id and gets the job's next attempt.
    let mut back = SimWorker::join_again(&tc, &id, &secret, "fragile").await;
    assert_eq!(back.id, id);
    let again = back.next_assignment().await;
    assert_eq!((&again.job_id, again.attempt), (&job.id, 2));
    back.finish(&again).await;
    wait_status(&mut jobs, &job.id, "succeeded").await;
    drop((back, jobs, conn));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_fails_after_max_failures_plus_one_failed_attempts() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let mut worker = SimWorker::join(&tc, "", "doomed").await;
    let spec = tc.spec("doomed", 1, 0) + "  max_failures: 2\n";
    let job = tc.submit(&mut jobs, &spec).await.unwrap();
    let mut attempts = Vec::new();
    let mut failed_at = Vec::new();
    let mut waited = Vec::new();
    // Each attempt's rank fails; stop orders for the failed attempt may
    // come in between.
    while attempts.len() < 4 {
        match worker
            .next_order(if attempts.len() < 3 { WAIT } else { QUIET })
            .await
        {
            Some(order::Kind::Assign(a)) => {
                if let Some(t) = failed_at.last() {
                    waited.push(tokio::time::Instant::now() - *t);
                }
                let report = WorkerReport {
                    worker_id: worker.id.clone(),
                    job_id: a.job_id.clone(),
                    attempt: a.attempt,
                    state: api::RankState::Failed.into(),
                    error: "out of memory on cuda:0".into(),
                    ..Default::default()
                };
                worker.reports.send(report).await.unwrap();
                failed_at.push(tokio::time::Instant::now());
                attempts.push(a.attempt);
            }
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(
        attempts,
        [1, 2, 3],
        "max_failures: 2 allows exactly 3 attempts"
    );
    let failed = wait_status(&mut jobs, &job.id, "failed").await;
    assert_eq!(failed.failures, 3);
    let error = failed.error.unwrap();
    for needle in [
        "doomed",
        &worker.id,
        "out of memory on cuda:0",
        "max_failures: 2",
    ] {
        assert!(
            error.message.contains(needle),
            "{needle}: {}",
            error.message
        );
    }

    // Each restart said which attempt comes next and waited its backoff,
    // doubling per failure.
    let restarts = events_of(&mut jobs, &job.id, "job.restarting").await;
    assert_eq!(restarts.len(), 2, "{restarts:?}");
    for (i, event) in restarts.iter().enumerate() {
        let data: serde_json::Value = serde_json::from_str(&event.data_json).unwrap();
        let backoff = BACKOFF * 2u32.pow(i as u32);
        assert_eq!(data["attempt"], i + 2, "{data}");
        assert_eq!(data["backoff_s"], backoff.as_secs_f64(), "{data}");
        assert!(data["resume_step"].is_null(), "no checkpoint yet: {data}");
        assert!(
            waited[i] >= backoff,
            "attempt {} came after {:?}",
            i + 2,
            waited[i]
        );
    }
    drop((worker, jobs, conn));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_worker_hands_its_job_on_after_a_checkpoint_without_a_failure() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let names = ["w0", "w1"];
    let mut fleet = vec![
        SimWorker::join(&tc, "", names[0]).await,
        SimWorker::join(&tc, "", names[1]).await,
    ];
    let job = tc.job(&mut jobs, "moving", 1, 0).await;
    let mut log = Log::new();
    gather(&mut fleet, &mut log, 1).await;
    let (holder, first) = log.pop().unwrap();
    let at = fleet.iter().position(|w| w.id == holder).unwrap();
    let name = names[at];
    let mut leaving = fleet.remove(at);
    let mut staying = fleet.pop().unwrap();
    leaving.report(&first, "running").await;
    leaving.step_event(&first, 5, 10).await;
    // The checkpoint is in storage (where the coordinator checks), and
    // its event says so.
    tc.commit_checkpoint(&job.id, 5).await;
    leaving.checkpoint_event(&first, 5, "step-000000005").await;
    wait_status(&mut jobs, &job.id, "running").await;

    let drained = conn
        .workers()
        .drain(api::WorkerRef {
            id: leaving.id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(drained.state(), api::WorkerState::Draining);
    // The rank is asked to stop at a step boundary, not killed.
    let preempt = leaving.next_preempt().await;
    assert_eq!((&preempt.job_id, preempt.attempt), (&job.id, 1));
    assert!(preempt.reason.contains(name), "{}", preempt.reason);
    leaving.report(&first, "preempted").await;

    let second = staying.next_assignment().await;
    assert_eq!((&second.job_id, second.attempt), (&job.id, 2));
    let moved = get(&mut jobs, &job.id).await;
    assert_eq!(moved.failures, 0, "a preemption is not a failure");
    let restart = events_of(&mut jobs, &job.id, "job.restarting").await;
    assert_eq!(restart.len(), 1);
    assert_eq!(data(&restart[0])["resume_step"], 5, "{:?}", restart[0]);
    assert_eq!(data(&restart[0])["backoff_s"], 0.0, "{:?}", restart[0]);
    let note = events_of(&mut jobs, &job.id, "worker.drained").await;
    assert_eq!(note.len(), 1);
    assert!(note[0].message.contains(name), "{}", note[0].message);
    // Draining, it takes no new work.
    tc.job(&mut jobs, "later", 1, 0).await;
    assert!(leaving.next_order(QUIET).await.is_none());
    staying.finish(&second).await;
    let done = wait_status(&mut jobs, &job.id, "succeeded").await;
    assert_eq!(done.failures, 0);
    drop((leaving, staying, jobs, conn));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_elastic_job_shrinks_when_a_worker_is_lost_and_grows_back() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let mut fleet = vec![
        SimWorker::join(&tc, "", "a").await,
        SimWorker::join(&tc, "", "b").await,
    ];
    let spec = tc
        .spec("elastic", 1, 0)
        .replace("workers: 1", "workers: \"1..2\"")
        .replace("max_steps: 2", "max_steps: 2\n  global_batch_size: 8");
    let job = tc.submit(&mut jobs, &spec).await.unwrap();
    let mut log = Log::new();
    gather(&mut fleet, &mut log, 2).await;
    assert!(
        log.iter().all(|(_, a)| a.world == 2 && a.attempt == 1),
        "{log:?}"
    );
    for (id, a) in &log {
        let w = fleet.iter().find(|w| &w.id == id).unwrap();
        w.report(a, "running").await;
        w.step_event(a, 1, 10).await;
    }
    wait_status(&mut jobs, &job.id, "running").await;

    // One worker's rank fails and the worker leaves: the job goes on
    // alone on the other. (A worker that dies without a word holds the
    // restart for the fence bound, `lost_after` + 1 s, 600 s here.)
    let leaving = fleet.pop().unwrap();
    let theirs = log.iter().find(|(id, _)| id == &leaving.id).unwrap();
    leaving.report(&theirs.1, "failed").await;
    drop(leaving);
    let mut survivor = fleet.pop().unwrap();
    let alone = survivor.next_assignment_after_stops().await;
    assert_eq!((alone.attempt, alone.world), (2, 1));
    survivor.report(&alone, "running").await;
    survivor.step_event(&alone, 3, 10).await;
    wait_status(&mut jobs, &job.id, "running").await;

    // A worker joins: the job stops after a checkpoint and grows back.
    let mut newcomer = SimWorker::join(&tc, "", "c").await;
    let preempt = survivor.next_preempt().await;
    assert_eq!(preempt.attempt, 2);
    survivor.report(&alone, "preempted").await;
    let mut fleet = vec![survivor, newcomer];
    let mut log = Log::new();
    gather(&mut fleet, &mut log, 2).await;
    assert!(
        log.iter().all(|(_, a)| a.world == 2 && a.attempt == 3),
        "{log:?}"
    );
    finish_all(&fleet, &log).await;
    let done = wait_status(&mut jobs, &job.id, "succeeded").await;
    assert_eq!(done.failures, 1, "only the lost worker counts");
    let resized: Vec<(u64, u64)> = events_of(&mut jobs, &job.id, "job.resized")
        .await
        .iter()
        .map(|e| {
            (
                data(e)["from"].as_u64().unwrap(),
                data(e)["to"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(resized, [(2, 1), (1, 2)]);
    newcomer = fleet.pop().unwrap();
    drop((newcomer, fleet, jobs, conn));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_whose_event_was_lost_is_found_in_storage() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let mut worker = SimWorker::join(&tc, "", "quiet").await;
    let job = tc.job(&mut jobs, "quiet", 1, 0).await;
    let a = worker.next_assignment().await;
    worker.report(&a, "running").await;
    worker.step_event(&a, 4, 10).await;
    wait_status(&mut jobs, &job.id, "running").await;
    // Rank 0 committed step 4, but its `checkpoint.saved` never arrived.
    tc.commit_checkpoint(&job.id, 4).await;
    worker.report(&a, "failed").await;
    wait_status(&mut jobs, &job.id, "restarting").await;
    let restart = events_of(&mut jobs, &job.id, "job.restarting").await;
    assert_eq!(data(&restart[0])["resume_step"], 4, "{:?}", restart[0]);
    let listed = jobs
        .list_checkpoints(api::JobRef { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let steps: Vec<u64> = listed.data.iter().map(|c| c.step).collect();
    assert_eq!(steps, [4]);
    drop((worker, jobs, conn));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_of_events_sent_again_is_stored_once() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let mut worker = SimWorker::join(&tc, "", "resender").await;
    let job = tc.job(&mut jobs, "resender", 1, 0).await;
    let a = worker.next_assignment().await;
    worker.report(&a, "running").await;
    let batch = |first_seq: u64, steps: &[u64]| api::ReportEventsRequest {
        worker_id: worker.id.clone(),
        job_id: a.job_id.clone(),
        attempt: a.attempt,
        events: steps
            .iter()
            .map(|step| api::Event {
                level: "info".into(),
                r#type: "train.step".into(),
                message: format!("step {step}"),
                data_json: step_data(*step, 10),
                ..Default::default()
            })
            .collect(),
        worker_secret: worker.secret.clone(),
        first_seq,
    };
    let mut workers = worker.conn.workers();
    // Sent, its reply lost, sent again; then one that overlaps by one.
    workers.report_events(batch(1, &[1, 2])).await.unwrap();
    workers.report_events(batch(1, &[1, 2])).await.unwrap();
    workers.report_events(batch(2, &[2, 3])).await.unwrap();
    let steps: Vec<String> = events_of(&mut jobs, &job.id, "train.step")
        .await
        .iter()
        .map(|e| e.message.split(':').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(steps, ["step 1/10", "step 2/10", "step 3/10"]);
    drop((workers, worker, jobs, conn));
    tc.shutdown().await;
}

/// A worker speaks only for its rank: an event the coordinator alone
/// emits (`job.succeeded`, `worker.lost`), or one that is no event of this
/// version, is dropped; the job goes on as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_cannot_report_the_coordinators_events_or_garbage() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let mut worker = SimWorker::join(&tc, "", "forger").await;
    let job = tc.job(&mut jobs, "forged", 1, 0).await;
    let a = worker.next_assignment().await;
    worker.report(&a, "running").await;
    worker.step_event(&a, 1, 10).await;
    wait_status(&mut jobs, &job.id, "running").await;
    worker
        .event(&a, "job.succeeded", r#"{"status": "succeeded"}"#)
        .await;
    worker
        .event(
            &a,
            "worker.lost",
            r#"{"worker_id": "w", "worker_name": "x"}"#,
        )
        .await;
    worker.event(&a, "train.step", r#"{"step": 9}"#).await;
    worker.event(&a, "train.dance", "{}").await;
    worker.step_event(&a, 2, 10).await;
    assert!(
        events_of(&mut jobs, &job.id, "job.succeeded")
            .await
            .is_empty()
    );
    assert!(
        events_of(&mut jobs, &job.id, "worker.lost")
            .await
            .is_empty()
    );
    assert!(
        events_of(&mut jobs, &job.id, "train.dance")
            .await
            .is_empty()
    );
    assert_eq!(events_of(&mut jobs, &job.id, "train.step").await.len(), 2);
    let now = get(&mut jobs, &job.id).await;
    assert_eq!(status(&now), "running");
    assert_eq!(now.step, 2, "the malformed step 9 moved nothing");
    drop((worker, jobs, conn));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_later_attempt_resumes_from_a_checkpoint_committed_after_the_one_before_ended() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let mut worker = SimWorker::join(&tc, "", "late").await;
    let spec = tc
        .spec("late", 1, 0)
        .replace("max_steps: 2", "max_steps: 10")
        + "  max_failures: 0\n";
    let job = tc.submit(&mut jobs, &spec).await.unwrap();
    let first = worker.next_assignment().await;
    worker.report(&first, "running").await;
    tc.commit_checkpoint(&job.id, 4).await;
    worker.checkpoint_event(&first, 4, "step-000000004").await;
    worker.report(&first, "failed").await;
    wait_status(&mut jobs, &job.id, "failed").await;
    // A rank cut off from the coordinator commits once more before its
    // fence stops it; the event never arrives.
    tc.commit_checkpoint(&job.id, 6).await;

    jobs.resume(api::JobRef { id: job.id.clone() })
        .await
        .unwrap();
    let second = worker.next_assignment_after_stops().await;
    assert_eq!(second.attempt, 2);
    let resumed = events_of(&mut jobs, &job.id, "job.resumed").await;
    assert!(
        resumed[0].message.contains("step 6"),
        "{}",
        resumed[0].message
    );
    let starting = events_of(&mut jobs, &job.id, "job.starting").await;
    assert_eq!(starting.len(), 2, "{starting:?}");
    assert!(
        data(&starting[0]).get("resume_step").is_none(),
        "a first attempt resumes nothing: {:?}",
        starting[0]
    );
    assert_eq!(data(&starting[1])["resume_step"], 6, "{:?}", starting[1]);
    assert!(
        starting[1].message.contains("checkpoint at step 6"),
        "{}",
        starting[1].message
    );
    worker.finish(&second).await;
    wait_status(&mut jobs, &job.id, "succeeded").await;
    drop((worker, jobs, conn));
    tc.shutdown().await;
}
