//! Workers, attempts and checkpoints.

use super::*;

#[tokio::test]
async fn workers_register_heartbeat_drain_and_get_lost() {
    let (store, _dir) = fresh().await;
    let worker = store.register_worker(&cpu_worker("w0")).await.unwrap();
    assert!(worker.id.as_str().starts_with("wkr-"));
    assert_eq!(
        (worker.state, worker.assignment.clone()),
        (WorkerState::Idle, None)
    );
    assert_eq!(worker.info, cpu_worker("w0"));
    assert_eq!(worker.registered_at, worker.last_heartbeat);

    let lost = store.mark_worker_lost(&worker.id).await.unwrap();
    assert_eq!(lost.state, WorkerState::Lost);
    // A heartbeat brings a lost worker back; it had no job, so idle.
    let back = store.heartbeat_worker(&worker.id).await.unwrap();
    assert_eq!(back.state, WorkerState::Idle);
    let draining = store.drain_worker(&worker.id).await.unwrap();
    assert_eq!(draining.state, WorkerState::Draining);
    assert_eq!(
        store.heartbeat_worker(&worker.id).await.unwrap().state,
        WorkerState::Draining
    );

    let other = store.register_worker(&cpu_worker("w1")).await.unwrap();
    store.mark_worker_lost(&other.id).await.unwrap();
    // Silent since a cutoff in the future: every worker not already lost.
    let silent = store
        .workers_silent_since(other.last_heartbeat + 10)
        .await
        .unwrap();
    assert_eq!(
        silent.into_iter().map(|w| w.id).collect::<Vec<_>>(),
        std::slice::from_ref(&worker.id)
    );
    assert!(store.workers_silent_since(0).await.unwrap().is_empty());
    assert_eq!(store.list_workers().await.unwrap().len(), 2);

    let nope = WorkerId::from("wkr-nope");
    let error = store.heartbeat_worker(&nope).await.unwrap_err();
    assert_eq!(error.to_string(), "worker wkr-nope not found");
    assert!(store.drain_worker(&nope).await.unwrap_err().is_not_found());
}

#[tokio::test]
async fn an_attempt_places_the_whole_gang_at_once() {
    let (store, dir) = fresh().await;
    let team = tenant(&store, "team-a").await;
    let job = store.create_job(&new_job(&team, "gang", 2)).await.unwrap();
    let w0 = store.register_worker(&cpu_worker("w0")).await.unwrap();
    let w1 = store.register_worker(&cpu_worker("w1")).await.unwrap();

    let attempt = store
        .start_attempt(&job.id, &[w1.id.clone(), w0.id.clone()])
        .await
        .unwrap();
    assert_eq!(
        (attempt.number, attempt.workers.clone()),
        (1, vec![w1.id.clone(), w0.id.clone()])
    );
    let secret = attempt
        .secret
        .clone()
        .expect("a fresh attempt has its secret");
    assert_eq!(secret.len(), 64);
    assert!(secret.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!format!("{attempt:?}").contains(&secret));
    // The store keeps no ring key: not in what it reads back, not on disk.
    let stored = store.get_attempt(&job.id, 1).await.unwrap();
    assert_eq!(stored.secret, None);
    for file in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(file.unwrap().path()).unwrap();
        assert!(!bytes.windows(64).any(|w| w == secret.as_bytes()));
    }
    assert_eq!((attempt.finished_at, attempt.failure.clone()), (None, None));
    let started = store.get_job(&job.id).await.unwrap();
    assert_eq!((started.status, started.attempt), (JobStatus::Starting, 1));
    for (worker, rank) in [(&w1, 0), (&w0, 1)] {
        let worker = store.get_worker(&worker.id).await.unwrap();
        assert_eq!(worker.state, WorkerState::Busy);
        assert_eq!(worker.assignment, Some((job.id.clone(), rank)));
    }
    let events = store.events_after(&job.id, 0, 10).await.unwrap();
    let starting = events.last().unwrap();
    assert_eq!(starting.kind, "job.starting");
    assert_eq!(starting.data["attempt"], 1);
    assert_eq!(
        starting.data["workers"],
        serde_json::json!([w1.id.as_str(), w0.id.as_str()])
    );
    let stored = store.get_attempt(&job.id, 1).await.unwrap();
    assert_eq!(
        stored,
        Attempt {
            secret: None,
            ..attempt
        }
    );
}

#[tokio::test]
async fn a_refused_gang_writes_nothing() {
    let (store, _dir) = fresh().await;
    let team = tenant(&store, "team-a").await;
    let job = store.create_job(&new_job(&team, "gang", 2)).await.unwrap();
    let idle = store.register_worker(&cpu_worker("idle")).await.unwrap();
    let draining = store
        .register_worker(&cpu_worker("draining"))
        .await
        .unwrap();
    store.drain_worker(&draining.id).await.unwrap();
    let gpu = store
        .register_worker(&WorkerInfo {
            backend: Backend::Cuda,
            ..cpu_worker("gpu")
        })
        .await
        .unwrap();
    let ghost = WorkerId::from("wkr-ghost");

    let refusals = [
        (
            vec![idle.id.clone(), draining.id.clone()],
            format!(
                "cannot place job {} on worker {}: it is draining, not idle",
                job.id, draining.id
            ),
        ),
        (
            vec![idle.id.clone(), gpu.id.clone()],
            format!(
                "cannot place job {} on worker {}: it runs cuda, the job needs cpu",
                job.id, gpu.id
            ),
        ),
        (
            vec![idle.id.clone(), ghost.clone()],
            "worker wkr-ghost not found".to_string(),
        ),
        (
            vec![idle.id.clone(), idle.id.clone()],
            format!(
                "cannot place job {} on worker {}: it is busy, not idle",
                job.id, idle.id
            ),
        ),
        (
            vec![idle.id.clone()],
            "invalid gang size \"1\": outside the job's resources.workers range".to_string(),
        ),
        (vec![], format!("cannot place job {} on no workers", job.id)),
    ];
    for (gang, message) in refusals {
        let error = store.start_attempt(&job.id, &gang).await.unwrap_err();
        assert_eq!(error.to_string(), message);
    }
    assert_eq!(store.get_job(&job.id).await.unwrap(), job);
    assert_eq!(
        store.get_worker(&idle.id).await.unwrap().state,
        WorkerState::Idle
    );
    assert!(store.list_attempts(&job.id).await.unwrap().is_empty());
    assert_eq!(event_kinds(&store, &job.id).await, ["job.queued"]);
}

#[tokio::test]
async fn two_placements_racing_for_one_worker_cannot_both_win() {
    let (store, _dir) = fresh().await;
    let team = tenant(&store, "team-a").await;
    let a = store.create_job(&new_job(&team, "a", 1)).await.unwrap();
    let b = store.create_job(&new_job(&team, "b", 1)).await.unwrap();
    let worker = store.register_worker(&cpu_worker("w0")).await.unwrap();
    let gang = [worker.id.clone()];
    let (first, second) = tokio::join!(
        store.start_attempt(&a.id, &gang),
        store.start_attempt(&b.id, &gang)
    );
    assert_eq!(
        usize::from(first.is_ok()) + usize::from(second.is_ok()),
        1,
        "{first:?} {second:?}"
    );
    let loser = if first.is_ok() { &b } else { &a };
    assert_eq!(
        store.get_job(&loser.id).await.unwrap().status,
        JobStatus::Queued
    );
}

#[tokio::test]
async fn finishing_an_attempt_counts_failures_and_frees_the_gang() {
    let (store, _dir) = fresh().await;
    let team = tenant(&store, "team-a").await;
    let job = store.create_job(&new_job(&team, "flaky", 2)).await.unwrap();
    let w0 = store.register_worker(&cpu_worker("w0")).await.unwrap();
    let w1 = store.register_worker(&cpu_worker("w1")).await.unwrap();
    let gang = [w0.id.clone(), w1.id.clone()];
    let first = store.start_attempt(&job.id, &gang).await.unwrap();
    store
        .move_job(&job.id, JobStatus::Running, None)
        .await
        .unwrap();
    store.drain_worker(&w1.id).await.unwrap();

    let failed = store
        .finish_attempt(&job.id, 1, Some("rank 1 lost"))
        .await
        .unwrap();
    assert_eq!(failed.failure.as_deref(), Some("rank 1 lost"));
    assert!(failed.finished_at.is_some());
    let after = store.get_job(&job.id).await.unwrap();
    assert_eq!((after.failures, after.may_restart()), (1, true));
    let w0_now = store.get_worker(&w0.id).await.unwrap();
    assert_eq!((w0_now.state, w0_now.assignment), (WorkerState::Idle, None));
    let w1_now = store.get_worker(&w1.id).await.unwrap();
    assert_eq!(
        (w1_now.state, w1_now.assignment),
        (WorkerState::Draining, None)
    );
    // Finishing the same attempt again changes nothing.
    assert_eq!(
        store
            .finish_attempt(&job.id, 1, Some("again"))
            .await
            .unwrap(),
        failed
    );
    assert_eq!(store.get_job(&job.id).await.unwrap().failures, 1);

    let restarting = store
        .move_job(&job.id, JobStatus::Restarting, None)
        .await
        .unwrap();
    assert!(restarting.waiting_since >= job.waiting_since);
    let third = store.register_worker(&cpu_worker("w2")).await.unwrap();
    let second = store
        .start_attempt(&job.id, &[w0.id.clone(), third.id.clone()])
        .await
        .unwrap();
    assert_eq!(second.number, 2);
    assert_ne!(second.secret, first.secret);
    assert!(second.secret.is_some());
    store
        .finish_attempt(&job.id, 2, Some("again"))
        .await
        .unwrap();
    assert!(!store.get_job(&job.id).await.unwrap().may_restart());
    assert_eq!(store.list_attempts(&job.id).await.unwrap().len(), 2);

    let error = store.finish_attempt(&job.id, 3, None).await.unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("job {} has no attempt 3", job.id)
    );
    let error = store
        .get_attempt(&JobId::from("job-nope"), 1)
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "job job-nope not found");
}

#[tokio::test]
async fn checkpoints_are_listed_by_step_and_replaced_when_saved_again() {
    let (store, _dir) = fresh().await;
    let team = tenant(&store, "team-a").await;
    let job = store.create_job(&new_job(&team, "ckpt", 1)).await.unwrap();
    assert_eq!(store.latest_checkpoint(&job.id).await.unwrap(), None);
    let save = |step: u64, loss: f64| NewCheckpoint {
        job: job.id.clone(),
        step,
        url: format!("s3://bucket/team-a/{}/checkpoints/step-{step:09}", job.id),
        metrics: serde_json::json!({ "step": step, "train_loss": loss }),
    };
    for step in [20, 60, 40] {
        store.record_checkpoint(&save(step, 1.0)).await.unwrap();
    }
    let steps = |list: Vec<Checkpoint>| list.into_iter().map(|c| c.step).collect::<Vec<_>>();
    assert_eq!(
        steps(store.list_checkpoints(&job.id).await.unwrap()),
        [20, 40, 60]
    );
    let latest = store.latest_checkpoint(&job.id).await.unwrap().unwrap();
    assert_eq!((latest.step, latest.url.clone()), (60, save(60, 1.0).url));

    let again = store.record_checkpoint(&save(60, 0.5)).await.unwrap();
    assert_eq!(store.latest_checkpoint(&job.id).await.unwrap(), Some(again));
    assert!(store.delete_checkpoint(&job.id, 20).await.unwrap());
    assert!(!store.delete_checkpoint(&job.id, 20).await.unwrap());
    let left = store.list_checkpoints(&job.id).await.unwrap();
    assert_eq!(left.len(), 2);
    assert_eq!(left[1].metrics["train_loss"], 0.5);

    let nope = JobId::from("job-nope");
    let error = store
        .record_checkpoint(&NewCheckpoint {
            job: nope.clone(),
            ..save(1, 1.0)
        })
        .await;
    assert_eq!(error.unwrap_err().to_string(), "job job-nope not found");
    assert!(
        store
            .list_checkpoints(&nope)
            .await
            .unwrap_err()
            .is_not_found()
    );
}
