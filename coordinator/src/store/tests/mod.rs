//! Store tests on real SQLite files in a temporary folder: restarts, token
//! hashing (here); jobs, transitions, paging and events (`jobs.rs`);
//! workers, attempts and checkpoints (`fleet.rs`).

mod fleet;
mod jobs;

use std::path::{Path, PathBuf};

use tempfile::TempDir;

use super::*;
use job::spec::{Backend, JobSpec};

/// A store on a fresh file, and the folder that holds it.
async fn fresh() -> (Store, TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(db_path(dir.path())).await.unwrap();
    (store, dir)
}

fn db_path(dir: &Path) -> PathBuf {
    dir.join("state.db")
}

/// Tenant `name` with a token of its own.
async fn tenant(store: &Store, name: &str) -> TenantId {
    let id = TenantId::new(name).unwrap();
    store
        .put_tenant(&id, &TokenHash::of_token(&new_token()))
        .await
        .unwrap();
    id
}

/// A fixed-size cpu job of `tenant` named `name`.
fn new_job(tenant: &TenantId, name: &str, workers: u32) -> NewJob {
    NewJob {
        tenant: tenant.clone(),
        name: name.to_string(),
        spec_yaml: format!("name: {name}\n"),
        priority: 0,
        workers_min: workers,
        workers_max: workers,
        backend: Backend::Cpu,
        total_steps: Some(100),
        max_failures: 1,
    }
}

fn cpu_worker(name: &str) -> WorkerInfo {
    WorkerInfo {
        name: name.to_string(),
        host: "host-1".to_string(),
        backend: Backend::Cpu,
        device: "cpu".to_string(),
        memory_bytes: 8 << 30,
        version: crate::PROTOCOL_VERSION.to_string(),
    }
}

fn event(job: &JobId, kind: &str, step: u64) -> NewEvent {
    NewEvent {
        job: job.clone(),
        level: Level::Info,
        kind: kind.to_string(),
        message: format!("step {step}"),
        data: serde_json::json!({ "step": step, "loss": 1.5 }),
    }
}

/// The types of job `id`'s events, in order.
async fn event_kinds(store: &Store, id: &JobId) -> Vec<String> {
    let events = store.events_after(id, 0, 1000).await.unwrap();
    events.into_iter().map(|event| event.kind).collect()
}

#[tokio::test]
async fn reopening_the_file_keeps_everything() {
    let (store, dir) = fresh().await;
    let token = new_token();
    let team = TenantId::new("team-a").unwrap();
    store
        .put_tenant(&team, &TokenHash::of_token(&token))
        .await
        .unwrap();
    let queued = store
        .create_job(&new_job(&team, "queued", 1))
        .await
        .unwrap();
    let running = store
        .create_job(&new_job(&team, "running", 2))
        .await
        .unwrap();
    let w0 = store.register_worker(&cpu_worker("w0")).await.unwrap();
    let w1 = store.register_worker(&cpu_worker("w1")).await.unwrap();
    let attempt = store
        .start_attempt(&running.id, &[w1.id.clone(), w0.id.clone()])
        .await
        .unwrap();
    store
        .move_job(&running.id, JobStatus::Running, None)
        .await
        .unwrap();
    store.set_job_progress(&running.id, 40, None).await.unwrap();
    store
        .append_event(&event(&running.id, "train.metrics", 40))
        .await
        .unwrap();
    store
        .record_checkpoint(&NewCheckpoint {
            job: running.id.clone(),
            step: 40,
            url: "file:///runs/team-a/job/checkpoints/step-000000040".to_string(),
            metrics: serde_json::json!({ "train_loss": 1.25 }),
        })
        .await
        .unwrap();

    let jobs_before = store.list_jobs(&JobQuery::default()).await.unwrap();
    let workers_before = store.list_workers().await.unwrap();
    let events_before = store.events_after(&running.id, 0, 100).await.unwrap();
    let checkpoints_before = store.list_checkpoints(&running.id).await.unwrap();
    store.close().await;
    drop(store);

    let store = Store::open(db_path(dir.path())).await.unwrap();
    let jobs_after = store.list_jobs(&JobQuery::default()).await.unwrap();
    assert_eq!(jobs_after, jobs_before);
    assert_eq!(
        store.get_job(&queued.id).await.unwrap().status,
        JobStatus::Queued
    );
    let resumed = store.get_job(&running.id).await.unwrap();
    assert_eq!(
        (resumed.status, resumed.step, resumed.attempt),
        (JobStatus::Running, 40, 1)
    );
    assert_eq!(store.list_workers().await.unwrap(), workers_before);
    assert_eq!(
        store.get_worker(&w1.id).await.unwrap().assignment,
        Some((running.id.clone(), 0))
    );
    assert_eq!(
        store.list_attempts(&running.id).await.unwrap(),
        vec![Attempt {
            secret: None,
            ..attempt
        }]
    );
    assert_eq!(
        store.events_after(&running.id, 0, 100).await.unwrap(),
        events_before
    );
    assert_eq!(
        store.list_checkpoints(&running.id).await.unwrap(),
        checkpoints_before
    );
    let found = store.tenant_by_token(&token).await.unwrap().unwrap();
    assert_eq!(found.id, team);
    // New ids keep growing after a restart: events never reuse an id.
    let next = store
        .append_event(&event(&running.id, "train.metrics", 41))
        .await
        .unwrap();
    assert!(next.id > events_before.last().unwrap().id);
}

#[tokio::test]
async fn opening_a_database_twice_at_once_shares_it() {
    let (first, dir) = fresh().await;
    let second = Store::open(db_path(dir.path())).await.unwrap();
    let team = tenant(&first, "team-a").await;
    let job = first
        .create_job(&new_job(&team, "shared", 1))
        .await
        .unwrap();
    assert_eq!(second.get_job(&job.id).await.unwrap(), job);
}

#[tokio::test]
async fn opening_an_unusable_path_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-folder").join("state.db");
    let error = Store::open(&path).await.unwrap_err();
    let message = error.to_string();
    assert!(
        message.starts_with("cannot open state database "),
        "{message}"
    );
    assert!(message.contains("missing-folder"), "{message}");
}

#[tokio::test]
async fn token_lookup_by_hash_never_stores_the_plain_token() {
    let (store, dir) = fresh().await;
    let token = new_token();
    assert!(
        token.starts_with("lft_") && token.len() == 4 + 64,
        "{token}"
    );
    let hash = TokenHash::of_token(&token);
    let team = TenantId::new("team-a").unwrap();
    store.put_tenant(&team, &hash).await.unwrap();
    tenant(&store, "team-b").await;

    let found = store.tenant_by_token(&token).await.unwrap().unwrap();
    assert_eq!((found.id, found.token_hash), (team.clone(), hash));
    assert_eq!(store.tenant_by_token("lft_wrong").await.unwrap(), None);
    assert_eq!(
        store.tenant_by_token(&format!("{token} ")).await.unwrap(),
        None
    );
    assert_eq!(store.list_tenants().await.unwrap().len(), 2);

    // Rotating the token: the old one stops working, the new one works.
    let rotated = new_token();
    store
        .put_tenant(&team, &TokenHash::of_token(&rotated))
        .await
        .unwrap();
    assert_eq!(store.tenant_by_token(&token).await.unwrap(), None);
    assert_eq!(
        store.tenant_by_token(&rotated).await.unwrap().unwrap().id,
        team
    );

    store.close().await;
    let mut bytes = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        bytes.extend(std::fs::read(entry.unwrap().path()).unwrap());
    }
    let contains = |needle: &[u8]| bytes.windows(needle.len()).any(|window| window == needle);
    assert!(contains(TokenHash::of_token(&rotated).to_hex().as_bytes()));
    assert!(!contains(token.as_bytes()));
    assert!(!contains(rotated.as_bytes()));
    assert!(
        !contains(&token.as_bytes()[4..]),
        "the token's random part is stored"
    );
}

#[test]
fn token_hashes_read_from_config_text() {
    let hash = TokenHash::of_token("secret");
    assert_eq!(
        hash.to_hex(),
        "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
    );
    assert_eq!(
        TokenHash::from_hex(&format!(" {}\n", hash.to_hex())).unwrap(),
        hash
    );
    let error = TokenHash::from_hex("abc").unwrap_err().to_string();
    assert!(error.contains("64 hex digits"), "{error}");
    assert!(!format!("{hash:?}").contains(&hash.to_hex()));
}
