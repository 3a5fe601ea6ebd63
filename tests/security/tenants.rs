//! One tenant against another under `serve --config`: storage prefixes
//! escaped with encoded `..` and symlinks, uploads named by hash, drains.

use tonic::Code;

use crate::common::fleet::text;
use crate::lab::{Lab, OPERATOR, TOKEN_A, TOKEN_B, spec};

/// Every way team B names team A's folder from inside its own prefixes.
fn escapes(lab: &Lab, target: &str) -> Vec<String> {
    let (b, s3) = (lab.b.display(), lab.s3);
    vec![
        format!("file://{b}/%2e%2e/a/{target}"),
        format!("file://{b}/.%2E/a/{target}"),
        format!("file://{b}/%2E%2e/a/{target}"),
        format!("{b}/../a/{target}"),
        format!("b/../a/{target}"),
        format!("{b}/link/{target}"),
        format!("file://{b}/link/{target}"),
        s3.url(&format!("b/%2e%2e/a/{target}")),
        s3.url(&format!("b/.%2E/a/{target}")),
        s3.url(&format!("b/../a/{target}")),
    ]
}

#[test]
fn encoded_dot_dot_and_symlinks_cannot_leave_a_tenants_storage() {
    let lab = Lab::start();
    let own_data = lab.b.join("data.jsonl").display().to_string();
    let own_runs = lab.b.join("runs").display().to_string();
    // Team B's own storage works, as a path, a file:// URL and in S3.
    lab.submit(TOKEN_B, &spec(&own_data, &own_runs, 5))
        .expect("team B may use its own folder");
    let own_url = format!("file://{own_data}");
    lab.submit(TOKEN_B, &spec(&own_url, &lab.s3.url("b/runs"), 5))
        .expect("team B may use its own URLs");

    let a_before = Lab::snapshot(&lab.a);
    let mut tried = 0;
    for field in [
        "dataset.train",
        "dataset.validation",
        "lora.init_adapter",
        "checkpoint.storage",
        "model.path",
    ] {
        let target = match field {
            "dataset.train" | "dataset.validation" => "secret.jsonl",
            "lora.init_adapter" | "model.path" => "adapter",
            _ => "runs",
        };
        for escape in escapes(&lab, target) {
            let mut yaml = spec(&own_data, &own_runs, 5);
            yaml = match field {
                "dataset.train" => yaml.replace(&own_data, &escape),
                "dataset.validation" => yaml.replace(
                    "  max_seq_len: 64\n",
                    &format!("  validation: {escape}\n  max_seq_len: 64\n"),
                ),
                "lora.init_adapter" => yaml.replace(
                    "  alpha: 8\n",
                    &format!("  alpha: 8\n  init_adapter: {escape}\n"),
                ),
                "checkpoint.storage" => yaml.replace(&own_runs, &escape),
                _ => yaml.replace("  preset: tiny\n", &format!("  path: {escape}\n")),
            };
            let refused = lab
                .submit(TOKEN_B, &yaml)
                .expect_err(&format!("{field}: {escape} was accepted"));
            let message = refused.message();
            // A model is read from a local path only, so the spec itself
            // refuses a URL there; everything else is the storage check's,
            // naming the field.
            if refused.code() == Code::InvalidArgument {
                assert!(
                    field == "model.path" && escape.contains("://"),
                    "{field}: {escape}: {message}"
                );
            } else {
                assert_eq!(
                    refused.code(),
                    Code::PermissionDenied,
                    "{escape}: {message}"
                );
                assert!(
                    message.contains(field) && message.contains("outside the storage"),
                    "{field}: {escape}: {message}"
                );
            }
            tried += 1;
        }
    }
    assert_eq!(tried, 50);
    // Nothing was written into team A's folder.
    assert_eq!(Lab::snapshot(&lab.a), a_before);
}

#[test]
fn an_upload_is_its_tenants_even_when_another_knows_its_hash() {
    let lab = Lab::start();
    let dir = lab.root().join("client-a");
    std::fs::create_dir_all(&dir).unwrap();
    // Team A submits a spec naming a local file: the client uploads it.
    let data = dir.join("private.jsonl");
    std::fs::copy(lab.a.join("secret.jsonl"), &data).unwrap();
    let spec_a = dir.join("a.yaml");
    std::fs::write(
        &spec_a,
        spec(
            &data.display().to_string(),
            &lab.a.join("runs").display().to_string(),
            5,
        ),
    )
    .unwrap();
    let out = lab
        .fleet
        .cli(Some(TOKEN_A), &["submit", spec_a.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let uploads_a = lab.uploads.join("team-a");
    let stored: Vec<_> = std::fs::read_dir(&uploads_a)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(stored.len(), 1, "{stored:?}");
    let upload = stored[0].display().to_string();

    let own_runs = lab.b.join("runs").display().to_string();
    let b_uploads = lab.uploads.join("team-b").display().to_string();
    // Named in the spec, straight or from B's own upload folder.
    for named in [
        upload.clone(),
        format!("file://{upload}"),
        format!(
            "{b_uploads}/../team-a/{}",
            stored[0].file_name().unwrap().to_str().unwrap()
        ),
        format!(
            "file://{b_uploads}/%2e%2e/team-a/{}",
            stored[0].file_name().unwrap().to_str().unwrap()
        ),
    ] {
        let refused = lab
            .submit(TOKEN_B, &spec(&named, &own_runs, 5))
            .unwrap_err();
        assert_eq!(
            refused.code(),
            Code::PermissionDenied,
            "{named}: {refused:?}"
        );
    }
    // Handed over as an upload reference.
    let conn = lab.connect(TOKEN_B);
    let own_data = lab.b.join("data.jsonl").display().to_string();
    let mut request = crate::lab::submit_request(&spec(&own_data, &own_runs, 5), lab.root());
    request
        .datasets
        .insert("dataset.train".into(), upload.clone());
    let refused = lab
        .runtime
        .block_on(conn.jobs().submit(request))
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("not one of this tenant's uploads"),
        "{refused:?}"
    );
}

#[test]
fn only_an_operator_drains_and_tenants_see_only_their_own_jobs_on_workers() {
    let mut lab = Lab::start();
    lab.fleet.add_worker("shared-worker");
    let workers = |token: &str| lab.workers(token);
    crate::common::fleet::wait_until(
        std::time::Duration::from_secs(30),
        "the worker to join",
        || workers(OPERATOR).len() == 1,
    );
    let worker = workers(OPERATOR)[0]["id"].as_str().unwrap().to_string();
    // Team A's job runs on the shared worker.
    let runs = lab.a.join("runs").display().to_string();
    let data = lab.a.join("secret.jsonl").display().to_string();
    let job = lab.submit(TOKEN_A, &spec(&data, &runs, 100_000)).unwrap();
    crate::common::fleet::wait_until(
        std::time::Duration::from_secs(60),
        "team A's job to start",
        || workers(OPERATOR)[0]["job_id"] == job.id.as_str(),
    );
    assert_eq!(workers(TOKEN_A)[0]["job_id"], job.id.as_str());
    let seen_by_b = &workers(TOKEN_B)[0];
    assert!(seen_by_b["job_id"].is_null(), "{seen_by_b}");
    assert!(seen_by_b["rank"].is_null(), "{seen_by_b}");
    assert!(!seen_by_b.to_string().contains(&job.id));

    // Tenants may neither drain nor undrain, not even the worker running
    // their own job.
    for token in [TOKEN_B, TOKEN_A] {
        for verb in ["drain", "undrain"] {
            let out = lab.fleet.cli(Some(token), &[verb, &worker]);
            assert_eq!(out.status.code(), Some(4), "{verb}: {}", text(&out.stderr));
            assert!(
                text(&out.stderr).contains("operator"),
                "{verb}: {}",
                text(&out.stderr)
            );
        }
    }
    assert_eq!(workers(OPERATOR)[0]["state"], "busy");
    // The operator drains (the job moves off) and undrains it.
    let out = lab.fleet.cli(Some(OPERATOR), &["drain", &worker, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(workers(OPERATOR)[0]["state"], "draining");
    let out = lab
        .fleet
        .cli(Some(OPERATOR), &["undrain", &worker, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let state = workers(OPERATOR)[0]["state"].clone();
    assert!(state == "idle" || state == "busy", "{state}");
    let out = lab.fleet.cli(Some(TOKEN_A), &["cancel", &job.id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn an_upload_cut_short_by_a_coordinator_crash_leaves_no_file_behind() {
    let mut lab = Lab::start();
    let conn = lab.connect(TOKEN_A);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let first = coordinator::api::DatasetChunk {
        file_name: "half.jsonl".into(),
        data: b"{\"text\": \"a record\"}\n".to_vec(),
        ..Default::default()
    };
    lab.runtime.block_on(tx.send(first)).unwrap();
    let upload = lab.runtime.spawn(async move {
        conn.jobs()
            .upload_dataset(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
    });
    let folder = lab.uploads.join("team-a");
    let unfinished = || {
        std::fs::read_dir(&folder)
            .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    crate::common::fleet::wait_until(
        std::time::Duration::from_secs(10),
        "the upload to start",
        || !unfinished().is_empty(),
    );
    lab.kill_and_restart_server();
    drop(tx);
    let _ = lab.runtime.block_on(upload);
    // The new coordinator removes it as it starts.
    crate::common::fleet::wait_until(
        std::time::Duration::from_secs(10),
        "the unfinished upload to be removed",
        || unfinished().is_empty(),
    );
}
