//! Jobs: creation, paging, the status machine and the event log.

use super::*;

#[tokio::test]
async fn a_new_job_is_queued_with_its_spec_and_a_queued_event() {
    let (store, _dir) = fresh().await;
    let team = tenant(&store, "team-a").await;
    let job = store.create_job(&new_job(&team, "first", 2)).await.unwrap();
    assert!(job.id.as_str().starts_with("job-"));
    assert_eq!(job.status, JobStatus::Queued);
    assert_eq!(job.spec_yaml, "name: first\n");
    assert_eq!(
        (job.step, job.total_steps, job.attempt, job.failures),
        (0, Some(100), 0, 0)
    );
    assert_eq!(
        (job.workers_min, job.workers_max, job.backend),
        (2, 2, Backend::Cpu)
    );
    assert_eq!(job.waiting_since, job.created_at);
    assert_eq!((job.finished_at, job.error.clone()), (None, None));
    assert_eq!(store.get_job(&job.id).await.unwrap(), job);
    let events = store.events_after(&job.id, 0, 10).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].kind.as_str(), events[0].level),
        ("job.queued", Level::Info)
    );
    // The stored data is the typed event, which reads back as itself.
    assert_eq!(
        events[0].data,
        serde_json::json!({ "type": "job.queued", "status": "queued" })
    );
    let typed = job::JobEvent::from_data(&events[0].kind, &events[0].data).unwrap();
    assert_eq!(typed, job::JobEvent::status_change("queued", None).unwrap());
}

#[tokio::test]
async fn a_job_is_made_from_a_validated_spec() {
    let yaml = "name: from-spec\nmodel:\n  preset: tiny\ndataset:\n  train: train.jsonl\n\
                training:\n  max_steps: 7\nresources:\n  workers: 2\n  priority: 3\n\
                checkpoint:\n  max_failures: 5\n";
    let spec = JobSpec::from_yaml(yaml, "job.yaml", "/specs").unwrap();
    let (store, _dir) = fresh().await;
    let team = tenant(&store, "team-a").await;
    let new = NewJob::from_spec(team, &spec, yaml.to_string());
    assert_eq!((new.priority, new.workers_min, new.workers_max), (3, 2, 2));
    assert_eq!((new.total_steps, new.max_failures), (Some(7), 5));
    let job = store.create_job(&new).await.unwrap();
    assert_eq!(
        (job.name.as_str(), job.spec_yaml.as_str()),
        ("from-spec", yaml)
    );
}

#[tokio::test]
async fn bad_submissions_are_refused() {
    let (store, _dir) = fresh().await;
    let ghost = TenantId::new("ghost").unwrap();
    let error = store
        .create_job(&new_job(&ghost, "x", 1))
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), "tenant ghost not found");
    let team = tenant(&store, "team-a").await;
    let error = store.create_job(&new_job(&team, "x", 0)).await.unwrap_err();
    assert!(
        error
            .to_string()
            .starts_with("invalid worker range \"0..0\""),
        "{error}"
    );
    assert!(
        store
            .list_jobs(&JobQuery::default())
            .await
            .unwrap()
            .data
            .is_empty()
    );
}

#[tokio::test]
async fn unknown_ids_are_not_found() {
    let (store, _dir) = fresh().await;
    let nope = JobId::from("job-nope");
    let error = store.get_job(&nope).await.unwrap_err();
    assert_eq!(error.to_string(), "job job-nope not found");
    assert!(error.is_not_found());
    for error in [
        store
            .move_job(&nope, JobStatus::Cancelled, None)
            .await
            .unwrap_err(),
        store.events_after(&nope, 0, 10).await.unwrap_err(),
        store.append_event(&event(&nope, "x", 1)).await.unwrap_err(),
        store.set_job_progress(&nope, 1, None).await.unwrap_err(),
    ] {
        assert_eq!(error.to_string(), "job job-nope not found");
    }
}

#[tokio::test]
async fn jobs_page_newest_first_per_tenant() {
    let (store, _dir) = fresh().await;
    let a = tenant(&store, "team-a").await;
    let b = tenant(&store, "team-b").await;
    let mut a_jobs = Vec::new();
    let mut b_jobs = Vec::new();
    for i in 0..5 {
        a_jobs.push(
            store
                .create_job(&new_job(&a, &format!("a{i}"), 1))
                .await
                .unwrap()
                .id,
        );
        if i % 2 == 0 {
            b_jobs.push(
                store
                    .create_job(&new_job(&b, &format!("b{i}"), 1))
                    .await
                    .unwrap()
                    .id,
            );
        }
    }
    let page = |tenant: Option<&TenantId>, after: Option<&JobId>, limit| JobQuery {
        tenant: tenant.cloned(),
        after: after.cloned(),
        limit,
        statuses: Vec::new(),
    };
    let names = |page: &Page<Job>| {
        page.data
            .iter()
            .map(|job| job.name.clone())
            .collect::<Vec<_>>()
    };

    let first = store.list_jobs(&page(Some(&a), None, 2)).await.unwrap();
    assert_eq!(
        (names(&first), first.has_more),
        (vec!["a4".into(), "a3".into()], true)
    );
    let second = store
        .list_jobs(&page(Some(&a), Some(&a_jobs[3]), 2))
        .await
        .unwrap();
    assert_eq!(
        (names(&second), second.has_more),
        (vec!["a2".into(), "a1".into()], true)
    );
    let last = store
        .list_jobs(&page(Some(&a), Some(&a_jobs[1]), 2))
        .await
        .unwrap();
    assert_eq!(
        (names(&last), last.has_more),
        (vec!["a0".to_string()], false)
    );
    let exact = store.list_jobs(&page(Some(&b), None, 3)).await.unwrap();
    assert_eq!(
        (names(&exact), exact.has_more),
        (vec!["b4".into(), "b2".into(), "b0".into()], false)
    );

    let everyone = store.list_jobs(&page(None, None, 100)).await.unwrap();
    assert_eq!(everyone.data.len(), 8);
    assert!(
        everyone
            .data
            .windows(2)
            .all(|pair| pair[0].seq > pair[1].seq)
    );
    // A limit of 0 still returns a job, so a client always progresses.
    assert_eq!(
        store
            .list_jobs(&page(None, None, 0))
            .await
            .unwrap()
            .data
            .len(),
        1
    );
    // Another tenant's job as the cursor is as unknown as a missing one.
    let error = store
        .list_jobs(&page(Some(&a), Some(&b_jobs[0]), 2))
        .await
        .unwrap_err();
    assert_eq!(error.to_string(), format!("job {} not found", b_jobs[0]));
}

#[test]
fn the_status_machine_allows_exactly_these_moves() {
    use JobStatus::*;
    let allowed = [
        (Queued, Starting),
        (Queued, Failed),
        (Queued, Cancelled),
        (Starting, Running),
        (Starting, Restarting),
        (Starting, Failed),
        (Starting, Cancelled),
        (Running, Succeeded),
        (Running, Restarting),
        (Running, Failed),
        (Running, Cancelled),
        (Restarting, Starting),
        (Restarting, Failed),
        (Restarting, Cancelled),
    ];
    for from in JobStatus::ALL {
        for to in JobStatus::ALL {
            let expected = allowed.contains(&(from, to));
            assert_eq!(from.can_move_to(to), expected, "{from} -> {to}");
        }
        assert_eq!(JobStatus::parse(from.name()), Some(from));
    }
}

#[tokio::test]
async fn every_move_is_logged_and_final_moves_set_finished_at() {
    let (store, _dir) = fresh().await;
    let team = tenant(&store, "team-a").await;
    let worker = store.register_worker(&cpu_worker("w0")).await.unwrap();
    let job = store.create_job(&new_job(&team, "ok", 1)).await.unwrap();
    store
        .start_attempt(&job.id, std::slice::from_ref(&worker.id))
        .await
        .unwrap();
    let running = store
        .move_job(&job.id, JobStatus::Running, None)
        .await
        .unwrap();
    assert_eq!(
        (running.status, running.finished_at),
        (JobStatus::Running, None)
    );
    let done = store
        .move_job(&job.id, JobStatus::Succeeded, None)
        .await
        .unwrap();
    assert_eq!(done.status, JobStatus::Succeeded);
    assert!(done.finished_at.is_some_and(|at| at >= done.created_at));
    assert_eq!(
        event_kinds(&store, &job.id).await,
        ["job.queued", "job.starting", "job.running", "job.succeeded"]
    );

    let failing = store.create_job(&new_job(&team, "bad", 1)).await.unwrap();
    let error = JobError {
        code: "dataset_invalid".to_string(),
        message: "train.jsonl:3: not JSON".to_string(),
    };
    let failed = store
        .move_job(&failing.id, JobStatus::Failed, Some(&error))
        .await
        .unwrap();
    assert_eq!(failed.error, Some(error));
    let events = store.events_after(&failing.id, 0, 10).await.unwrap();
    let last = events.last().unwrap();
    assert_eq!(
        (last.kind.as_str(), last.level),
        ("job.failed", Level::Error)
    );
    assert_eq!(last.data["error"]["code"], "dataset_invalid");
    assert!(
        last.message.ends_with(": train.jsonl:3: not JSON"),
        "{}",
        last.message
    );
}

#[tokio::test]
async fn illegal_moves_are_refused_and_leave_no_trace() {
    let (store, _dir) = fresh().await;
    let team = tenant(&store, "team-a").await;
    let job = store.create_job(&new_job(&team, "j", 1)).await.unwrap();

    let error = store
        .move_job(&job.id, JobStatus::Running, None)
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        format!("cannot move job {} from queued to running", job.id)
    );
    assert!(!error.is_not_found());
    assert_eq!(store.get_job(&job.id).await.unwrap(), job);

    let error = store
        .move_job(&job.id, JobStatus::Starting, None)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("start_attempt"), "{error}");

    store
        .move_job(&job.id, JobStatus::Cancelled, None)
        .await
        .unwrap();
    let cancelled = store.get_job(&job.id).await.unwrap();
    for to in JobStatus::ALL {
        let error = store.move_job(&job.id, to, None).await.unwrap_err();
        if to != JobStatus::Starting {
            assert_eq!(
                error.to_string(),
                format!("cannot move job {} from cancelled to {to}", job.id)
            );
        }
    }
    let worker = store.register_worker(&cpu_worker("w0")).await.unwrap();
    let error = store
        .start_attempt(&job.id, std::slice::from_ref(&worker.id))
        .await
        .unwrap_err();
    assert!(
        matches!(error, StoreError::IllegalTransition { .. }),
        "{error}"
    );
    assert_eq!(store.get_job(&job.id).await.unwrap(), cancelled);
    assert_eq!(
        event_kinds(&store, &job.id).await,
        ["job.queued", "job.cancelled"]
    );
}

#[tokio::test]
async fn progress_is_recorded_and_total_steps_kept_until_known() {
    let (store, _dir) = fresh().await;
    let team = tenant(&store, "team-a").await;
    let mut by_epochs = new_job(&team, "epochs", 1);
    by_epochs.total_steps = None;
    let job = store.create_job(&by_epochs).await.unwrap();
    store.set_job_progress(&job.id, 0, Some(250)).await.unwrap();
    store.set_job_progress(&job.id, 12, None).await.unwrap();
    let job = store.get_job(&job.id).await.unwrap();
    assert_eq!((job.step, job.total_steps), (12, Some(250)));
}

#[tokio::test]
async fn jobs_with_status_come_in_submit_order() {
    let (store, _dir) = fresh().await;
    let team = tenant(&store, "team-a").await;
    let mut ids = Vec::new();
    for name in ["a", "b", "c", "d"] {
        ids.push(store.create_job(&new_job(&team, name, 1)).await.unwrap().id);
    }
    store
        .move_job(&ids[1], JobStatus::Cancelled, None)
        .await
        .unwrap();
    store
        .move_job(&ids[3], JobStatus::Failed, None)
        .await
        .unwrap();
    let waiting = store
        .jobs_with_status(&[JobStatus::Queued, JobStatus::Restarting])
        .await
        .unwrap();
    let waiting: Vec<_> = waiting.into_iter().map(|job| job.id).collect();
    assert_eq!(waiting, [ids[0].clone(), ids[2].clone()]);
    let finished = store
        .jobs_with_status(&[JobStatus::Failed, JobStatus::Cancelled])
        .await
        .unwrap();
    assert_eq!(finished.len(), 2);
    assert!(store.jobs_with_status(&[]).await.unwrap().is_empty());
}

#[tokio::test]
async fn events_replay_after_an_id_then_follow() {
    let (store, _dir) = fresh().await;
    let team = tenant(&store, "team-a").await;
    let job = store
        .create_job(&new_job(&team, "watched", 1))
        .await
        .unwrap();
    let other = store.create_job(&new_job(&team, "other", 1)).await.unwrap();
    let mut appended = Vec::new();
    for step in 1..=4 {
        appended.push(
            store
                .append_event(&event(&job.id, "train.metrics", step))
                .await
                .unwrap(),
        );
        store
            .append_event(&event(&other.id, "train.metrics", step))
            .await
            .unwrap();
    }

    // Replay from the start: the queued event, then the four appended.
    let all = store.events_after(&job.id, 0, 100).await.unwrap();
    assert_eq!(all.len(), 5);
    assert_eq!(all[1..], appended[..]);
    assert!(all.windows(2).all(|pair| pair[0].id < pair[1].id));
    assert!(all.iter().all(|event| event.job == job.id));
    assert_eq!(all[2].data, serde_json::json!({ "step": 2, "loss": 1.5 }));

    // A client that saw event 2 gets 3 and 4; one that saw the last gets
    // nothing until something new lands, then exactly that.
    let rest = store
        .events_after(&job.id, appended[1].id, 100)
        .await
        .unwrap();
    assert_eq!(rest, appended[2..]);
    let limited = store.events_after(&job.id, 0, 2).await.unwrap();
    assert_eq!(limited, all[..2]);
    let last_seen = appended[3].id;
    assert!(
        store
            .events_after(&job.id, last_seen, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let warning = NewEvent {
        level: Level::Warn,
        kind: "worker.lost".to_string(),
        data: serde_json::Value::Null,
        ..event(&job.id, "", 0)
    };
    let new = store.append_event(&warning).await.unwrap();
    assert_eq!(
        store.events_after(&job.id, last_seen, 100).await.unwrap(),
        std::slice::from_ref(&new)
    );
    assert_eq!(
        (new.level, new.data),
        (Level::Warn, serde_json::Value::Null)
    );
}

#[tokio::test]
async fn lists_filter_by_status_and_jobs_keep_their_latest_figures() {
    let (store, _dir) = fresh().await;
    let team = tenant(&store, "team-a").await;
    let waiting = store
        .create_job(&new_job(&team, "waiting", 1))
        .await
        .unwrap();
    let gone = store.create_job(&new_job(&team, "gone", 1)).await.unwrap();
    store
        .move_job(&gone.id, JobStatus::Cancelled, None)
        .await
        .unwrap();
    let query = |statuses: Vec<JobStatus>| JobQuery {
        tenant: Some(team.clone()),
        limit: 10,
        statuses,
        ..JobQuery::default()
    };
    let ids = |page: Page<Job>| page.data.into_iter().map(|j| j.id).collect::<Vec<_>>();
    let cancelled = store.list_jobs(&query(vec![JobStatus::Cancelled])).await;
    assert_eq!(ids(cancelled.unwrap()), vec![gone.id.clone()]);
    let either = query(vec![JobStatus::Queued, JobStatus::Cancelled]);
    assert_eq!(store.list_jobs(&either).await.unwrap().data.len(), 2);
    let running = store.list_jobs(&query(vec![JobStatus::Running])).await;
    assert!(running.unwrap().data.is_empty());

    let step = |step, loss: f64| StepReport {
        step,
        total_steps: 10,
        loss,
        step_seconds: 0.5,
        tokens_per_s: 1000.0,
        target_tokens: 64,
    };
    store
        .record_step(&waiting.id, &step(1, 2.5), true)
        .await
        .unwrap();
    // Another rank's report of the same step moves nothing but the figures.
    store
        .record_step(&waiting.id, &step(1, 2.5), false)
        .await
        .unwrap();
    store
        .record_step(&waiting.id, &step(2, f64::NAN), true)
        .await
        .unwrap();
    store.record_eval(&waiting.id, 2.25).await.unwrap();
    let job = store.get_job(&waiting.id).await.unwrap();
    assert_eq!((job.step, job.total_steps), (2, Some(10)));
    assert_eq!(job.progress.train_loss, None, "NaN is kept as unknown");
    assert_eq!(job.progress.valid_loss, Some(2.25));
    assert_eq!(job.progress.trained_tokens, 128);
    assert_eq!(job.eta_seconds(), None, "only a running job has an ETA");
    let missing = store.record_eval(&JobId::from("job-none"), 1.0).await;
    assert!(missing.unwrap_err().is_not_found());

    let totals = store.job_totals().await.unwrap();
    let of = |status| totals.iter().find(|(s, _)| *s == status).unwrap().1;
    assert_eq!(
        (of(JobStatus::Queued).jobs, of(JobStatus::Cancelled).jobs),
        (1, 1)
    );
    assert_eq!(of(JobStatus::Queued).trained_tokens, 128);
    assert!(totals.iter().all(|(s, _)| *s != JobStatus::Running));

    let figures = store.job_figures(&[JobStatus::Queued]).await.unwrap();
    assert_eq!(figures.len(), 1);
    assert_eq!(
        (figures[0].id.clone(), figures[0].step),
        (waiting.id.clone(), 2)
    );
    assert_eq!(figures[0].progress, job.progress);

    let request = serde_json::json!({"model": "tiny", "suffix": "s"});
    store.put_job_request(&waiting.id, &request).await.unwrap();
    let ids = [waiting.id.clone(), gone.id.clone()];
    let requests = store.job_requests(&ids).await.unwrap();
    assert_eq!(
        requests.len(),
        1,
        "only the job made through the API has one"
    );
    assert_eq!(requests[&waiting.id], request);
    assert_eq!(store.job_request(&gone.id).await.unwrap(), None);
}

#[tokio::test]
async fn files_are_a_tenants_own_and_deleting_says_whether_bytes_are_shared() {
    let (store, _dir) = fresh().await;
    let a = tenant(&store, "team-a").await;
    let b = tenant(&store, "team-b").await;
    let file = |name: &str| NewFile {
        tenant: a.clone(),
        filename: name.into(),
        purpose: "fine-tune".into(),
        bytes: 10,
        sha256: "ab".into(),
        path: "/uploads/ab.jsonl".into(),
    };
    let first = store.create_file(&file("one.jsonl")).await.unwrap();
    let second = store.create_file(&file("two.jsonl")).await.unwrap();
    assert!(first.id.starts_with("file-") && first.id != second.id);
    assert!(
        store
            .get_file(&b, &first.id)
            .await
            .unwrap_err()
            .is_not_found()
    );
    let page = store.list_files(&a, None, None, 1).await.unwrap();
    assert_eq!(
        (page.data[0].id.clone(), page.has_more),
        (second.id.clone(), true)
    );
    let next = store
        .list_files(&a, None, Some(&second.id), 1)
        .await
        .unwrap();
    assert_eq!(
        (next.data[0].id.clone(), next.has_more),
        (first.id.clone(), false)
    );
    assert!(
        store
            .list_files(&b, None, None, 10)
            .await
            .unwrap()
            .data
            .is_empty()
    );
    assert!(
        store
            .delete_file(&b, &first.id)
            .await
            .unwrap_err()
            .is_not_found()
    );
    let (_, shared) = store.delete_file(&a, &first.id).await.unwrap();
    assert!(shared, "two.jsonl still names the bytes");
    let (_, shared) = store.delete_file(&a, &second.id).await.unwrap();
    assert!(!shared);
}
