//! Checkpoints in object storage, against a real S3 server (SeaweedFS,
//! through testkit) and a local folder: the same tests on both.
//!
//! What users rely on: a committed checkpoint reads back byte for byte; one
//! whose upload failed half way never looks committed, and the one before
//! stays the latest; a corrupt file is found by its checksum and named;
//! retention keeps what it promises and deletes only after a newer commit.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use futures::stream::BoxStream;
use object_store::path::Path as StorePath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use trainer::checkpoint::store::MULTIPART_THRESHOLD;
use trainer::checkpoint::uploader::PendingCheckpoint;
use trainer::checkpoint::{
    CheckpointError, CheckpointNotice, CheckpointStore, CheckpointUploader, MANIFEST_FILE,
    Retention, block_on,
};
use trainer::storage::Location;

/// Where the tests run: a prefix on the shared SeaweedFS, and a local folder.
fn backends(test: &str) -> Vec<(String, Location, Option<tempfile::TempDir>)> {
    let s3 = testkit::SeaweedFs::shared();
    let prefix = format!("{test}-{}", std::process::id());
    let s3_location = Location::from_store(
        s3.store(),
        StorePath::from(prefix.as_str()),
        s3.url(&prefix),
    );
    let dir = tempfile::tempdir().unwrap();
    let local = Location::parse(dir.path().to_str().unwrap()).unwrap();
    vec![
        ("s3".into(), s3_location, None),
        ("local".into(), local, Some(dir)),
    ]
}

/// A folder shaped like a saved state: small files and, if `big`, one
/// large enough to go up as a multipart upload.
fn state_folder(seed: u8, big: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("adapter_config.json"),
        format!("{{\"r\": {seed}}}"),
    )
    .unwrap();
    let adapter: Vec<u8> = (0..100_000u32)
        .map(|i| (i as u8).wrapping_mul(seed))
        .collect();
    std::fs::write(dir.path().join("adapter_model.safetensors"), adapter).unwrap();
    std::fs::write(dir.path().join("trainer_state.json"), "{}").unwrap();
    if big {
        let n = MULTIPART_THRESHOLD as usize + 3 * 1024 * 1024 + 17;
        let bytes: Vec<u8> = (0..n).map(|i| (i % 251) as u8 ^ seed).collect();
        std::fs::write(dir.path().join("optimizer.safetensors"), bytes).unwrap();
    } else {
        std::fs::write(dir.path().join("optimizer.safetensors"), [seed; 64]).unwrap();
    }
    dir
}

fn assert_same_files(a: &Path, b: &Path) {
    let mut names: Vec<_> = std::fs::read_dir(a)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let left = std::fs::read(a.join(&name)).unwrap();
        let right = std::fs::read(b.join(&name)).unwrap_or_default();
        assert!(left == right, "{name:?} differs after the round trip");
    }
}

#[test]
fn a_committed_checkpoint_reads_back_byte_for_byte() {
    for (backend, root, _dir) in backends("roundtrip") {
        let store = CheckpointStore::at(root);
        let folder = state_folder(3, true);
        let metrics = serde_json::json!({"train_loss": 1.5, "eval_loss": 1.25});
        let manifest = block_on(store.commit(20, folder.path(), metrics.clone())).unwrap();
        assert_eq!(manifest.files.len(), 4, "{backend}");
        assert_eq!(manifest.metrics, metrics);
        let big = manifest.file("optimizer.safetensors").unwrap();
        assert!(
            big.bytes > MULTIPART_THRESHOLD,
            "{backend}: the multipart path ran"
        );

        assert_eq!(block_on(store.steps()).unwrap(), vec![20], "{backend}");
        let fetched = tempfile::tempdir().unwrap();
        let back = block_on(store.fetch(20, fetched.path())).unwrap();
        assert_eq!(back, manifest, "{backend}");
        assert_same_files(folder.path(), fetched.path());
        block_on(store.verify(20)).unwrap();
    }
}

#[test]
fn a_failed_upload_leaves_no_manifest_and_resume_takes_the_one_before() {
    for (backend, root, _dir) in backends("atomic") {
        let good = CheckpointStore::at(root.clone());
        block_on(good.commit(10, state_folder(1, false).path(), serde_json::json!({}))).unwrap();

        // The same storage, but the PUT of step 20's optimizer state fails
        // after the adapter went up.
        let failing = FailingPut {
            inner: root.store().clone(),
            fails_on: "step-000000020/optimizer.safetensors".into(),
        };
        let broken_root = Location::from_store(Arc::new(failing), root.path().clone(), root.name());
        let broken = CheckpointStore::at(broken_root);
        let err = block_on(broken.commit(20, state_folder(2, false).path(), serde_json::json!({})))
            .unwrap_err();
        assert!(
            err.to_string().contains("optimizer.safetensors"),
            "{backend}: {err}"
        );

        // Step 20 has files but no manifest: it does not exist.
        let manifest = good.location(20).join(MANIFEST_FILE);
        let head = block_on(manifest.store().head(manifest.path()));
        assert!(
            matches!(head, Err(object_store::Error::NotFound { .. })),
            "{backend}"
        );
        let committed: Vec<u64> = block_on(good.committed())
            .unwrap()
            .iter()
            .map(|m| m.step)
            .collect();
        assert_eq!(committed, vec![10], "{backend}");

        let mut skipped = Vec::new();
        let into = tempfile::tempdir().unwrap();
        let restored = block_on(
            good.restore_latest(into.path(), &mut |step, e: &CheckpointError| {
                skipped.push((step, e.to_string()))
            }),
        )
        .unwrap()
        .unwrap();
        assert_eq!(restored.step, 10, "{backend}");
        assert_eq!(skipped.len(), 1, "{backend}: {skipped:?}");
        assert!(
            skipped[0].1.contains("never committed"),
            "{backend}: {skipped:?}"
        );
        assert_same_files(state_folder(1, false).path(), into.path());
    }
}

#[test]
fn a_flipped_byte_is_found_and_the_file_named() {
    for (backend, root, _dir) in backends("corrupt") {
        let store = CheckpointStore::at(root);
        block_on(store.commit(5, state_folder(5, false).path(), serde_json::json!({}))).unwrap();
        block_on(store.commit(10, state_folder(6, false).path(), serde_json::json!({}))).unwrap();

        let target = store.location(10).join("adapter_model.safetensors");
        let mut bytes = block_on(async {
            target
                .store()
                .get(target.path())
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        })
        .to_vec();
        bytes[1234] ^= 0x01;
        block_on(target.store().put(target.path(), PutPayload::from(bytes))).unwrap();

        let err = block_on(store.verify(10)).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("step-000000010"), "{backend}: {text}");
        assert!(
            text.contains("adapter_model.safetensors"),
            "{backend}: {text}"
        );
        assert!(text.contains("SHA-256"), "{backend}: {text}");

        let mut skipped = Vec::new();
        let into = tempfile::tempdir().unwrap();
        let restored = block_on(
            store.restore_latest(into.path(), &mut |step, e: &CheckpointError| {
                skipped.push((step, e.to_string()))
            }),
        )
        .unwrap()
        .unwrap();
        assert_eq!(restored.step, 5, "{backend}");
        assert_eq!(skipped[0].0, 10);
        assert!(
            skipped[0].1.contains("adapter_model.safetensors"),
            "{skipped:?}"
        );
    }
}

#[test]
fn the_uploader_keeps_the_last_and_the_best() {
    for (backend, root, _dir) in backends("retention") {
        let store = CheckpointStore::at(root);
        let notices = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = notices.clone();
        let mut uploader = CheckpointUploader::start(
            store.clone(),
            Retention {
                keep_last: 2,
                keep_best: true,
            },
            Vec::new(),
            Box::new(move |n| {
                let line = match n {
                    CheckpointNotice::Committed { manifest, .. } => {
                        format!("commit {}", manifest.step)
                    }
                    CheckpointNotice::Deleted { step } => format!("delete {step}"),
                    CheckpointNotice::DeleteFailed { step, error } => {
                        format!("failed {step}: {error}")
                    }
                };
                seen.lock().unwrap().push(line);
            }),
        );
        for (step, loss) in [(10, 3.0), (20, 1.0), (30, 2.0), (40, 2.5)] {
            uploader
                .submit(PendingCheckpoint {
                    step,
                    folder: state_folder(step as u8, false),
                    metrics: serde_json::json!({"eval_loss": loss}),
                })
                .unwrap();
        }
        uploader.finish().unwrap();
        let steps: Vec<u64> = block_on(store.committed())
            .unwrap()
            .iter()
            .map(|m| m.step)
            .collect();
        assert_eq!(
            steps,
            vec![20, 30, 40],
            "{backend}: the best (20) and the last two"
        );
        assert_eq!(
            block_on(store.steps()).unwrap(),
            vec![20, 30, 40],
            "{backend}: no leftovers"
        );
        let log = notices.lock().unwrap().clone();
        assert_eq!(
            log,
            [
                "commit 10",
                "commit 20",
                "commit 30",
                "delete 10",
                "commit 40"
            ],
            "{backend}: a checkpoint goes only once a newer one is committed, and then at once"
        );
    }
}

#[test]
fn a_failed_upload_is_reported_by_the_next_submit() {
    let dir = tempfile::tempdir().unwrap();
    let root = Location::parse(dir.path().to_str().unwrap()).unwrap();
    let failing = FailingPut {
        inner: root.store().clone(),
        fails_on: "step-000000001/".into(),
    };
    let store = CheckpointStore::at(Location::from_store(
        Arc::new(failing),
        root.path().clone(),
        root.name(),
    ));
    let retention = Retention {
        keep_last: 1,
        keep_best: false,
    };
    let mut uploader = CheckpointUploader::start(store, retention, Vec::new(), Box::new(|_| {}));
    let pending = |step| PendingCheckpoint {
        step,
        folder: state_folder(1, false),
        metrics: serde_json::json!({}),
    };
    uploader.submit(pending(1)).unwrap();
    let err = uploader.submit(pending(2)).unwrap_err();
    assert!(err.to_string().contains("injected failure"), "{err}");
}

/// A store whose PUTs to paths containing `fails_on` fail, as a server
/// that goes away mid-checkpoint would.
#[derive(Debug)]
struct FailingPut {
    inner: Arc<dyn ObjectStore>,
    fails_on: String,
}

impl std::fmt::Display for FailingPut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FailingPut({})", self.inner)
    }
}

impl FailingPut {
    fn check(&self, location: &StorePath) -> object_store::Result<()> {
        if location.as_ref().contains(&self.fails_on) {
            return Err(object_store::Error::Generic {
                store: "FailingPut",
                source: format!("injected failure writing {location}").into(),
            });
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl ObjectStore for FailingPut {
    async fn put_opts(
        &self,
        location: &StorePath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check(location)?;
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &StorePath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check(location)?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &StorePath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &StorePath,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<StorePath>>,
    ) -> BoxStream<'static, object_store::Result<StorePath>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&StorePath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&StorePath>,
    ) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &StorePath,
        to: &StorePath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}
