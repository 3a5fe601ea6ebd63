//! The coordinator end to end: scheduling, cancelling, refusing bad
//! input, and resuming, with simulated workers (see `common`).

mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gangs_start_whole_and_the_queue_drains() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let mut workers = Vec::new();
    for i in 0..3 {
        workers.push(SimWorker::join(&tc, "", &format!("w{i}")).await);
    }
    let mut ids = Vec::new();
    for (name, n) in [("first", 2), ("second", 2), ("small", 1)] {
        let job = tc.job(&mut jobs, name, n, 0).await;
        assert_eq!(status(&job), "queued");
        ids.push(job.id);
    }
    let (first, second, small) = (&ids[0], &ids[1], &ids[2]);

    let mut log = Log::new();
    gather(&mut workers, &mut log, 3).await;
    // The second two-worker job waits: one worker is free, it needs two.
    sleep(QUIET).await;
    gather(&mut workers, &mut log, 0).await;
    assert_eq!(log.len(), 3, "{log:?}");
    assert_eq!(count_for(&log, first), 2, "{log:?}");
    assert_eq!(count_for(&log, small), 1, "{log:?}");
    assert_eq!(status(&get(&mut jobs, second).await), "queued");
    assert_whole_gangs(&conn, &mut jobs).await;

    // Progress reported by a rank shows in the job.
    let (w0, a0) = log.iter().find(|(_, a)| &a.job_id == first).unwrap();
    let rank = workers.iter().find(|w| &w.id == w0).unwrap();
    rank.step_event(a0, 1, 2).await;
    let running = wait_status(&mut jobs, first, "running").await;
    assert_eq!((running.step, running.total_steps), (1, Some(2)));

    finish_all(&workers, &log).await;
    wait_status(&mut jobs, first, "succeeded").await;
    wait_status(&mut jobs, small, "succeeded").await;

    gather(&mut workers, &mut log, 5).await;
    assert_eq!((log.len(), count_for(&log[3..], second)), (5, 2), "{log:?}");
    assert_whole_gangs(&conn, &mut jobs).await;
    finish_all(&workers, &log[3..]).await;
    wait_status(&mut jobs, second, "succeeded").await;

    // Every attempt got exactly `world` distinct workers, ranks 0..world,
    // all with the same peers and secret.
    let mut gangs: BTreeMap<(&str, u32), Vec<&(String, Assignment)>> = BTreeMap::new();
    for entry in &log {
        let key = (entry.1.job_id.as_str(), entry.1.attempt);
        gangs.entry(key).or_default().push(entry);
    }
    assert_eq!(gangs.len(), 3, "one attempt per job: {:?}", gangs.keys());
    for ((job, _), gang) in gangs {
        let a0 = &gang[0].1;
        let world = a0.world as usize;
        let distinct: BTreeSet<_> = gang.iter().map(|(w, _)| w).collect();
        let ranks: BTreeSet<_> = gang.iter().map(|(_, a)| a.rank as usize).collect();
        assert_eq!((gang.len(), distinct.len()), (world, world), "{gang:?}");
        assert_eq!(ranks, (0..world).collect(), "{gang:?}");
        for (_, a) in gang {
            assert_eq!(
                (a.world, &a.peers, &a.secret),
                (a0.world, &a0.peers, &a0.secret)
            );
            assert_eq!(a.peers.len(), world);
            assert!(a.spec_yaml.contains("preset: tiny") && a.output_url.contains(job));
        }
    }
    drop((workers, jobs, conn));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_freed_worker_takes_the_highest_priority_job_first() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let mut worker = SimWorker::join(&tc, "", "only").await;
    let busy = tc.job(&mut jobs, "busy", 1, 0).await;
    let first = worker.next_assignment().await;
    assert_eq!(first.job_id, busy.id);

    let low = tc.job(&mut jobs, "low", 1, -5).await;
    let high = tc.job(&mut jobs, "high", 1, 5).await;
    assert_eq!((low.priority, high.priority), (-5, 5));
    let none = worker.next_order(QUIET).await;
    assert!(none.is_none(), "{none:?}");

    worker.finish(&first).await;
    let next = worker.next_assignment().await;
    assert_eq!(next.job_id, high.id, "the high-priority job goes first");
    assert_eq!(status(&get(&mut jobs, &low.id).await), "queued");
    worker.finish(&next).await;
    let last = worker.next_assignment().await;
    assert_eq!(last.job_id, low.id);
    worker.finish(&last).await;
    for id in [&busy.id, &high.id, &low.id] {
        wait_status(&mut jobs, id, "succeeded").await;
    }
    drop((worker, jobs, conn));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_jobs_never_start_and_running_ones_are_stopped() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let queued = tc.job(&mut jobs, "queued", 1, 0).await;
    assert_eq!(status(&cancel(&mut jobs, &queued.id).await), "cancelled");

    let mut worker = SimWorker::join(&tc, "", "late").await;
    let order = worker.next_order(Duration::from_secs(2)).await;
    assert!(order.is_none(), "a cancelled job was started: {order:?}");
    assert_eq!(status(&get(&mut jobs, &queued.id).await), "cancelled");

    // The same worker does take a live job; cancelling it stops the rank.
    let live = tc.job(&mut jobs, "live", 1, 0).await;
    let a = worker.next_assignment().await;
    assert_eq!(a.job_id, live.id);
    worker.report(&a, "running").await;
    assert_eq!(status(&cancel(&mut jobs, &live.id).await), "cancelled");
    match worker.next_order(WAIT).await {
        Some(order::Kind::Stop(stop)) => {
            assert_eq!((&stop.job_id, stop.attempt), (&a.job_id, a.attempt));
        }
        other => panic!("expected a stop order, got {other:?}"),
    }
    // A late report for the cancelled attempt changes nothing.
    worker.finish(&a).await;
    sleep(QUIET).await;
    assert_eq!(status(&get(&mut jobs, &live.id).await), "cancelled");
    assert_eq!(status(&get(&mut jobs, &queued.id).await), "cancelled");
    drop((worker, jobs, conn));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_and_datasets_are_refused_with_every_location() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let data = quickstart_data();
    let bad = format!(
        "name: bad\nmodel:\n  preset: tiny\ndataset:\n  train: {}\nlora: {{r: 0}}\n\
         training:\n  max_steps: 2\n  learnig_rate: 0.1\nresources:\n  workerz: 2\n",
        data.display()
    );
    let status = refused(tc.submit(&mut jobs, &bad).await, Code::InvalidArgument);
    for want in [
        "(3 problems)",
        "job.yaml:6:11: lora.r: must be between 1 and 1024, got 0",
        "job.yaml:9:3: training.learnig_rate: unknown key; did you mean learning_rate?",
        "job.yaml:11:3: resources.workerz: unknown key",
    ] {
        let message = status.message();
        assert!(message.contains(want), "{want:?} not in {message}");
    }

    let text = std::fs::read_to_string(&data).unwrap();
    let mut lines: Vec<&str> = text.lines().take(4).collect();
    lines[2] = r#"{"prompt": "Reverse: elf\n", "completion": "#;
    let broken = tc.dir.path().join("broken.jsonl");
    std::fs::write(&broken, lines.join("\n")).unwrap();
    let spec = tc.spec_on(&broken, "broken", 1, 0);
    let status = refused(tc.submit(&mut jobs, &spec).await, Code::InvalidArgument);
    let want = format!("{}:3:", broken.display());
    assert!(status.message().contains(&want), "{want} not in {status:?}");
    assert!(!status.message().contains(":1:") && !status.message().contains(":4:"));

    let list = jobs.list(ListJobsRequest::default()).await.unwrap();
    assert!(list.into_inner().data.is_empty(), "nothing was queued");
    drop((jobs, conn));
    tc.shutdown().await;
}

/// Metadata for a bare `Jobs` client: a token if given, and the version.
#[derive(Clone)]
struct Meta(Option<&'static str>);

impl tonic::service::Interceptor for Meta {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        let metadata = request.metadata_mut();
        if let Some(token) = self.0 {
            metadata.insert(api::AUTHORIZATION, api::bearer(token).parse().unwrap());
        }
        metadata.insert(api::VERSION_HEADER, PROTOCOL_VERSION.parse().unwrap());
        Ok(request)
    }
}

/// A `Jobs` client without `Connection`'s size limits or credentials.
async fn bare_jobs(
    tc: &TestCoordinator,
    token: Option<&'static str>,
) -> JobsClient<InterceptedService<Channel, Meta>> {
    let channel = Channel::from_shared(tc.url.clone()).unwrap();
    let channel = channel.connect().await.unwrap();
    JobsClient::with_interceptor(channel, Meta(token)).max_encoding_message_size(64 << 20)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_and_garbage_do_not_stop_the_server() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let huge = format!("name: huge\n# {}\n", "x".repeat(5 << 20));
    // Past the server's message limit, from a client that sends it.
    let mut bare = bare_jobs(&tc, Some(TENANT)).await;
    let status = bare.submit(tc.request(&huge)).await.unwrap_err();
    let limit = matches!(status.code(), Code::OutOfRange | Code::ResourceExhausted);
    assert!(limit, "{status:?}");
    // Under the message limit but over the spec limit.
    let large = format!("name: large\n# {}\n", "x".repeat(2 << 20));
    let status = refused(bare.submit(tc.request(&large)).await, Code::InvalidArgument);
    assert!(status.message().contains("larger than"), "{status:?}");
    // `Connection`'s client refuses to send it at all.
    assert!(tc.submit(&mut jobs, &huge).await.is_err());
    jobs.list(ListJobsRequest::default()).await.unwrap();

    let addr = tc.url.trim_start_matches("http://").to_string();
    let noise: Vec<u8> = (0..64 << 10).map(|_| rand::random::<u8>()).collect();
    let mut h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    h2.extend_from_slice(&noise[..4096]);
    let http1 = b"POST /lorafleet.v1.Jobs/List HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
    for bytes in [noise, h2, http1] {
        let mut socket = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let _ = socket.write_all(&bytes).await;
        let _ = socket.flush().await;
        // Still open while a real client calls.
        jobs.list(ListJobsRequest::default()).await.unwrap();
    }
    let fresh = tc.connect(TENANT).await;
    let list = fresh.jobs().list(ListJobsRequest::default()).await.unwrap();
    assert!(list.into_inner().data.is_empty());
    drop((bare, jobs, conn, fresh));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_need_the_right_token_and_version() {
    let tc = TestCoordinator::start().await;
    let list = ListJobsRequest::default;
    let unauthenticated = Code::Unauthenticated;
    let mut anonymous = bare_jobs(&tc, None).await;
    refused(anonymous.list(list()).await, unauthenticated);
    let mut wrong = tc.connect("not-a-token").await.jobs();
    refused(wrong.list(list()).await, unauthenticated);
    let spec = tc.spec("x", 1, 0);
    refused(tc.submit(&mut wrong, &spec).await, unauthenticated);
    // The cluster token is for workers, not for jobs.
    let mut cluster = tc.connect(CLUSTER).await.jobs();
    refused(cluster.list(list()).await, unauthenticated);

    let register = api::RegisterRequest {
        name: "intruder".into(),
        backend: api::Backend::Cpu.into(),
        version: PROTOCOL_VERSION.into(),
        ring_addr: "127.0.0.1:1".into(),
        ..Default::default()
    };
    let tenant = tc.connect(TENANT).await;
    let mut workers = tenant.workers();
    refused(workers.register(register.clone()).await, unauthenticated);
    let fleet = workers.list(api::ListWorkersRequest {}).await.unwrap();
    assert!(fleet.into_inner().data.is_empty(), "none registered");
    tenant.jobs().list(list()).await.unwrap();

    let (other, within) = ("0.0.0-other", Duration::from_secs(5));
    let client = Connection::open_as(&tc.url, TENANT, other, within);
    let client = client.await.unwrap();
    let status = refused(client.jobs().list(list()).await, Code::FailedPrecondition);
    for version in [other, PROTOCOL_VERSION] {
        assert!(status.message().contains(version), "{version}: {status:?}");
    }
    let worker = Connection::open_as(&tc.url, CLUSTER, other, within);
    let registered = worker.await.unwrap().workers().register(register).await;
    let status = refused(registered, Code::FailedPrecondition);
    assert!(status.message().contains(other), "{status:?}");
    drop((anonymous, wrong, cluster, workers, tenant, client));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_larger_than_the_fleet_is_told_so_and_stopping_ends_open_streams() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let _worker = SimWorker::join(&tc, "", "alone").await;
    let job = tc.job(&mut jobs, "too-big", 2, 0).await;
    let watch = api::WatchRequest {
        job_id: job.id.clone(),
        after_id: 0,
        follow: true,
    };
    let mut events = jobs.watch_events(watch).await.unwrap().into_inner();
    let unfit = timeout(WAIT, async {
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            if event.r#type == "job.unfit" {
                return event;
            }
        }
        panic!("the watch ended without a job.unfit event");
    })
    .await
    .expect("a job.unfit event");
    assert_eq!(level(&unfit), "warn");
    assert!(unfit.message.contains('2'), "{}", unfit.message);
    assert_eq!(status(&get(&mut jobs, &job.id).await), "queued");

    // A connected worker and a following watcher do not hold up a stop.
    tc.shutdown().await;
}

#[tokio::test]
async fn a_failed_job_resumes_as_a_new_attempt_with_a_fresh_failure_budget() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let mut worker = SimWorker::join(&tc, "", "flaky").await;
    let spec = tc.spec("flaky", 1, 0) + "  max_failures: 0\n";
    let job = tc.submit(&mut jobs, &spec).await.unwrap();
    let worker_id = worker.id.clone();
    let report = |a: &api::Assignment, state: &str| WorkerReport {
        worker_id: worker_id.clone(),
        job_id: a.job_id.clone(),
        attempt: a.attempt,
        state: rank_state(state).into(),
        error: if state == "failed" {
            "disk full".into()
        } else {
            String::new()
        },
        ..Default::default()
    };
    let Some(order::Kind::Assign(first)) = worker.next_order(WAIT).await else {
        panic!("the job is assigned");
    };
    worker.reports.send(report(&first, "failed")).await.unwrap();
    wait_status(&mut jobs, &job.id, "failed").await;

    let resumed = jobs
        .resume(JobRef { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status(&resumed), "restarting");
    assert_eq!(resumed.failures, 0, "a fresh max_failures budget");
    assert!(resumed.error.is_none());
    let second = loop {
        match worker.next_order(WAIT).await {
            Some(order::Kind::Assign(a)) => break a,
            Some(_) => {}
            None => panic!("the resumed job is assigned again"),
        }
    };
    assert_eq!(
        second.attempt, 2,
        "a new attempt, which resumes from the checkpoint"
    );
    worker
        .reports
        .send(report(&second, "finished"))
        .await
        .unwrap();
    wait_status(&mut jobs, &job.id, "succeeded").await;

    // Only failed or cancelled jobs resume.
    let refused = jobs
        .resume(JobRef { id: job.id.clone() })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert!(
        refused.message().contains("succeeded"),
        "{}",
        refused.message()
    );
    drop((worker, jobs, conn));
    tc.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_past_the_last_step_is_not_recorded() {
    let tc = TestCoordinator::start().await;
    let conn = tc.connect(TENANT).await;
    let mut jobs = conn.jobs();
    let mut worker = SimWorker::join(&tc, "", "rank0").await;
    let job = tc.job(&mut jobs, "bounded", 1, 0).await;
    let a = worker.next_assignment().await;
    worker.report(&a, "running").await;
    worker.step_event(&a, 1, 10).await;
    wait_status(&mut jobs, &job.id, "running").await;
    for step in [999_999, 5] {
        worker
            .checkpoint_event(&a, step, &format!("step-{step:09}"))
            .await;
    }
    let listed = jobs
        .list_checkpoints(JobRef { id: job.id.clone() })
        .await
        .unwrap()
        .into_inner();
    let steps: Vec<u64> = listed.data.iter().map(|c| c.step).collect();
    assert_eq!(steps, [5], "the forged step is not a checkpoint");
    cancel(&mut jobs, &job.id).await;
    tc.shutdown().await;
}
