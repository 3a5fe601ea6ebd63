use super::*;

fn step_metrics() -> StepMetrics {
    StepMetrics {
        step: 7,
        epoch: 0,
        loss: 2.5,
        learning_rate: 1e-3,
        grad_norm: 0.5,
        target_tokens: 100,
        tokens_per_s: 1234.4,
        step_time_s: 0.25,
    }
}

/// One event of every type.
fn every_event() -> Vec<JobEvent> {
    let change = |status: &str| StatusChange {
        status: status.into(),
        ..StatusChange::default()
    };
    let end = RankEnd {
        rank: 1,
        error: "boom".into(),
        stderr_tail: vec!["last line".into()],
    };
    vec![
        JobEvent::TrainStarted {
            step: 0,
            total_steps: 10,
            world: 2,
        },
        JobEvent::TrainStep {
            total_steps: 10,
            metrics: step_metrics(),
        },
        JobEvent::TrainEval(EvalMetrics {
            step: 3,
            eval_loss: 1.5,
            target_tokens: 9,
        }),
        JobEvent::CheckpointSaved {
            step: 3,
            path: "s3://b/t/j/checkpoints/step-000000003".into(),
            metrics: serde_json::json!({"train_loss": 1.0, "eval_loss": null}),
            bytes: 10,
            upload_s: 0.5,
        },
        JobEvent::CheckpointDeleted { step: 3 },
        JobEvent::CheckpointWaiting {
            step: 3,
            waited_s: 0.1,
        },
        JobEvent::CheckpointSkipped {
            step: 3,
            error: "bad hash".into(),
        },
        JobEvent::CheckpointDeleteFailed {
            step: 3,
            error: "denied".into(),
        },
        JobEvent::TrainPreempted {
            step: 4,
            checkpoints: "x".into(),
        },
        JobEvent::TrainFinished(RunSummary {
            name: "n".into(),
            steps: 10,
            train_loss: Some(1.0),
            eval_loss_initial: None,
            eval_loss_final: Some(0.5),
            trained_tokens: 100,
            elapsed_s: 1.0,
            output_dir: None,
            checkpoints: "c".into(),
            checkpoint_blocking_s: 0.0,
            world: 1,
        }),
        JobEvent::TrainFailed {
            error: "no peer".into(),
            ring_peer: Some(1),
        },
        JobEvent::RankStarted {
            rank: 0,
            world: 2,
            worker_id: "w-1".into(),
            worker_name: "a".into(),
            host: "h".into(),
        },
        JobEvent::RankFinished(end.clone()),
        JobEvent::RankPreempted(end.clone()),
        JobEvent::RankFailed(end),
        JobEvent::RankFenced {
            error: "silent".into(),
            silent_s: 3.0,
        },
        JobEvent::JobQueued(change("queued")),
        JobEvent::JobStarting(change("starting")),
        JobEvent::JobRunning(change("running")),
        JobEvent::JobRestarting(change("restarting")),
        JobEvent::JobStarting(StatusChange {
            status: "starting".into(),
            attempt: Some(2),
            workers: vec!["w-1".into(), "w-2".into()],
            ..StatusChange::default()
        }),
        JobEvent::JobRestarting(StatusChange {
            status: "restarting".into(),
            attempt: Some(2),
            restart: Some(RestartNext {
                resume_step: Some(50),
                backoff_s: 1.5,
                failures: 1,
                max_failures: 3,
            }),
            ..StatusChange::default()
        }),
        JobEvent::JobSucceeded(change("succeeded")),
        JobEvent::JobFailed(StatusChange {
            status: "failed".into(),
            error: Some(EventError {
                code: "rank_failed".into(),
                message: "rank 1 failed".into(),
            }),
            ..StatusChange::default()
        }),
        JobEvent::JobCancelled(change("cancelled")),
        JobEvent::JobResumed {
            status: "restarting".into(),
        },
        JobEvent::JobUnfit {
            reason: "no gpu".into(),
        },
        JobEvent::JobResized {
            from: 2,
            to: 3,
            attempt: 2,
        },
        JobEvent::JobGrowing { from: 2, to: 3 },
        JobEvent::WorkerDrained {
            worker_id: "w-1".into(),
            worker_name: "a".into(),
            step: 4,
        },
        JobEvent::WorkerLost {
            worker_id: "w-1".into(),
            worker_name: "a".into(),
            reason: String::new(),
        },
    ]
}

#[test]
fn every_event_comes_back_from_its_line_and_from_its_stored_data() {
    for event in every_event() {
        let line = event.to_line();
        assert_eq!(JobEvent::from_line(&line).unwrap(), event, "{line}");
        // The tag is the type the rest of the system sees.
        let data = event.to_data();
        assert_eq!(data["type"], event.kind(), "{line}");
        let mut untagged = data.clone();
        untagged.as_object_mut().unwrap().remove("type");
        assert_eq!(JobEvent::from_data(event.kind(), &untagged).unwrap(), event);
        assert!(!event.to_string().is_empty());
    }
}

#[test]
fn the_type_words_are_unique_and_statuses_map_to_their_events() {
    let events = every_event();
    let mut kinds: Vec<&str> = events.iter().map(JobEvent::kind).collect();
    kinds.sort();
    kinds.dedup();
    // Two starting and two restarting events above; every other type once.
    assert_eq!(kinds.len(), events.len() - 2);
    for status in [
        "queued",
        "starting",
        "running",
        "restarting",
        "succeeded",
        "failed",
        "cancelled",
    ] {
        let event = JobEvent::status_change(status, None).unwrap();
        assert_eq!(event.kind(), format!("job.{status}"));
    }
    assert!(JobEvent::status_change("sleeping", None).is_none());
}

#[test]
fn a_step_event_keeps_the_flat_metric_keys_scripts_read() {
    let event = JobEvent::TrainStep {
        total_steps: 10,
        metrics: step_metrics(),
    };
    let data = event.to_data();
    for key in [
        "step",
        "total_steps",
        "epoch",
        "loss",
        "learning_rate",
        "grad_norm",
        "target_tokens",
        "tokens_per_s",
        "step_time_s",
    ] {
        assert!(data.get(key).is_some(), "{key} missing from {data}");
    }
    assert_eq!(event.to_string(), "step 7/10: loss 2.5000, 1234 tokens/s");
    assert_eq!(
        step_summary(&step_metrics()),
        "loss 2.5000 · lr 1.00e-3 · 1234 tok/s"
    );
    assert_eq!(event.step(), Some(7));
}

#[test]
fn lines_that_are_no_event_of_this_version_are_refused() {
    assert!(JobEvent::from_line(r#"{"type": "train.dance", "step": 1}"#).is_err());
    assert!(JobEvent::from_line(r#"{"step": 1}"#).is_err());
    assert!(JobEvent::from_line("not json").is_err());
    // A known type missing a field it needs.
    assert!(JobEvent::from_line(r#"{"type": "train.eval", "step": 1}"#).is_err());
}

#[test]
fn levels_follow_what_went_wrong() {
    let failed = JobEvent::TrainFailed {
        error: "x".into(),
        ring_peer: None,
    };
    assert_eq!(failed.level(), Level::Error);
    assert_eq!(JobEvent::CheckpointDeleted { step: 1 }.level(), Level::Info);
    assert_eq!(Level::parse("warn"), Some(Level::Warn));
    assert_eq!(Level::parse("loud"), None);
}
