//! A job's checkpoints in object storage: commit, list, verify, fetch,
//! delete.
//!
//! Layout under the job's root (`{storage}/{tenant}/{job}`):
//! `checkpoints/step-{step:09}/` holding the files of a saved training
//! state and `MANIFEST.json`, which is written last. The commit protocol
//! needs nothing but plain PUTs, so it is the same on a local folder, S3,
//! GCS or Azure:
//!
//! 1. delete any `MANIFEST.json` of that step (an earlier attempt's),
//! 2. upload every file (large ones as multipart uploads), hashing as it goes,
//! 3. upload `MANIFEST.json` with their sizes and SHA-256.
//!
//! A reader trusts a checkpoint only when its manifest parses and every file
//! it lists has that size and hash. Deleting removes the manifest first, so
//! a half-deleted checkpoint is an uncommitted one, never a corrupt one.

use std::path::Path;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt;

use super::CheckpointError;
use super::manifest::{CheckpointManifest, FORMAT, MANIFEST_FILE, ManifestFile};
use crate::storage::Location;

/// Files larger than this go up as multipart uploads.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// The part size of multipart uploads.
pub const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts of one file uploading at once.
pub const PART_CONCURRENCY: usize = 8;

/// The checkpoints of one job.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    root: Location,
    /// Goes into the manifest of every commit (`CheckpointManifest::writer`).
    writer: String,
}

/// The folder name of the checkpoint at `step`.
pub fn step_folder(step: u64) -> String {
    format!("step-{step:09}")
}

impl CheckpointStore {
    /// The checkpoints of job `job` of `tenant` under `storage` (a local
    /// path or a storage URL).
    pub fn open(
        storage: &str,
        tenant: &str,
        job: &str,
    ) -> Result<CheckpointStore, CheckpointError> {
        let root = Location::parse(storage)?.join(tenant).join(job);
        Ok(CheckpointStore::at(root))
    }

    /// The checkpoints under `root` (the job's own folder).
    pub fn at(root: Location) -> CheckpointStore {
        CheckpointStore {
            root,
            writer: String::new(),
        }
    }

    /// This store, signing every manifest it commits with `writer`.
    pub fn with_writer(mut self, writer: impl Into<String>) -> CheckpointStore {
        self.writer = writer.into();
        self
    }

    /// The job's folder.
    pub fn root(&self) -> &Location {
        &self.root
    }

    /// The folder of the checkpoint at `step` (committed or not).
    pub fn location(&self, step: u64) -> Location {
        self.root.join("checkpoints").join(&step_folder(step))
    }

    /// Every step that has a checkpoint folder holding at least one
    /// object, committed or not, oldest first. (Some servers keep a folder
    /// after its last object is deleted; such a folder is no checkpoint.)
    pub async fn steps(&self) -> Result<Vec<u64>, CheckpointError> {
        let folder = self.root.join("checkpoints");
        let prefix_parts = folder.path().parts().count();
        let listed: Result<Vec<_>, _> = folder
            .store()
            .list(Some(folder.path()))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await;
        let paths = match listed {
            Ok(paths) => paths,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(CheckpointError::store(&folder, e)),
        };
        let mut steps: Vec<u64> = paths
            .iter()
            .filter_map(|p| {
                let part = p.parts().nth(prefix_parts)?;
                part.as_ref().strip_prefix("step-")?.parse().ok()
            })
            .collect();
        steps.sort_unstable();
        steps.dedup();
        Ok(steps)
    }

    /// The manifest of the checkpoint at `step`, parsed but with its files
    /// not yet checked.
    pub async fn manifest(&self, step: u64) -> Result<CheckpointManifest, CheckpointError> {
        let at = self.location(step).join(MANIFEST_FILE);
        let bytes = match at.store().get(at.path()).await {
            Ok(got) => got
                .bytes()
                .await
                .map_err(|e| CheckpointError::store(&at, e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(CheckpointError::Uncommitted {
                    checkpoint: self.location(step).name().to_string(),
                });
            }
            Err(e) => return Err(CheckpointError::store(&at, e)),
        };
        CheckpointManifest::parse(&bytes, step).map_err(|message| CheckpointError::Invalid {
            location: at.name().to_string(),
            message,
        })
    }

    /// The manifests of every committed checkpoint, oldest first; folders
    /// without a readable manifest are left out.
    pub async fn committed(&self) -> Result<Vec<CheckpointManifest>, CheckpointError> {
        let mut manifests = Vec::new();
        for step in self.steps().await? {
            match self.manifest(step).await {
                Ok(m) => manifests.push(m),
                Err(CheckpointError::Store { location, source }) => {
                    return Err(CheckpointError::Store { location, source });
                }
                Err(_) => {}
            }
        }
        Ok(manifests)
    }

    /// Uploads the files of `folder` (a saved training state) as the
    /// checkpoint at `step`, then commits it with its manifest.
    pub async fn commit(
        &self,
        step: u64,
        folder: &Path,
        metrics: serde_json::Value,
    ) -> Result<CheckpointManifest, CheckpointError> {
        let at = self.location(step);
        let manifest_at = at.join(MANIFEST_FILE);
        match at.store().delete(manifest_at.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(CheckpointError::store(&manifest_at, e)),
        }
        let mut files = Vec::new();
        for name in local_files(folder)? {
            let file = upload_file(&at, &folder.join(&name), &name).await?;
            files.push(file);
        }
        let manifest = CheckpointManifest {
            format: FORMAT.to_string(),
            step,
            created_at: unix_now(),
            metrics,
            files,
            writer: self.writer.clone(),
        };
        at.store()
            .put(manifest_at.path(), PutPayload::from(manifest.to_json()))
            .await
            .map_err(|e| CheckpointError::store(&manifest_at, e))?;
        Ok(manifest)
    }

    /// Streams one file of the checkpoint at `step` as stored (callers
    /// check it against the manifest).
    pub async fn file_stream(
        &self,
        step: u64,
        path: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, CheckpointError>>, CheckpointError> {
        let at = self.location(step).join(path);
        let got = at
            .store()
            .get(at.path())
            .await
            .map_err(|e| self.missing_or_store(step, path, &at, e))?;
        let name = at.name().to_string();
        Ok(got
            .into_stream()
            .map_err(move |source| CheckpointError::Store {
                location: name.clone(),
                source,
            })
            .boxed())
    }

    /// Downloads the checkpoint at `step` into the folder `into` (created
    /// if needed), checking every file against the manifest.
    pub async fn fetch(
        &self,
        step: u64,
        into: &Path,
    ) -> Result<CheckpointManifest, CheckpointError> {
        let manifest = self.manifest(step).await?;
        let checkpoint = self.location(step).name().to_string();
        tokio::fs::create_dir_all(into)
            .await
            .map_err(|e| CheckpointError::io(into, e))?;
        for file in &manifest.files {
            let target = into.join(file.path.replace('/', std::path::MAIN_SEPARATOR_STR));
            if let Some(parent) = target.parent() {
                tokio::fs::create_dir_all(parent)
                    .await
                    .map_err(|e| CheckpointError::io(parent, e))?;
            }
            let mut out = tokio::fs::File::create(&target)
                .await
                .map_err(|e| CheckpointError::io(&target, e))?;
            let mut check = FileCheck::new(&checkpoint, file);
            let mut stream = self.file_stream(step, &file.path).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                check.update(&chunk)?;
                tokio::io::AsyncWriteExt::write_all(&mut out, &chunk)
                    .await
                    .map_err(|e| CheckpointError::io(&target, e))?;
            }
            check.finish()?;
        }
        Ok(manifest)
    }

    /// Reads every file of the checkpoint at `step` and checks it against
    /// the manifest, without keeping the bytes.
    pub async fn verify(&self, step: u64) -> Result<CheckpointManifest, CheckpointError> {
        let manifest = self.manifest(step).await?;
        let checkpoint = self.location(step).name().to_string();
        for file in &manifest.files {
            let mut check = FileCheck::new(&checkpoint, file);
            let mut stream = self.file_stream(step, &file.path).await?;
            while let Some(chunk) = stream.next().await {
                check.update(&chunk?)?;
            }
            check.finish()?;
        }
        Ok(manifest)
    }

    /// Downloads the newest checkpoint that verifies into `into`. Each
    /// newer one that does not (uncommitted, missing or corrupt files) is
    /// passed to `skipped` with the reason, and the one before it is tried.
    pub async fn restore_latest(
        &self,
        into: &Path,
        skipped: &mut (dyn FnMut(u64, &CheckpointError) + Send),
    ) -> Result<Option<CheckpointManifest>, CheckpointError> {
        for step in self.steps().await?.into_iter().rev() {
            let _ = tokio::fs::remove_dir_all(into).await;
            match self.fetch(step, into).await {
                Ok(manifest) => return Ok(Some(manifest)),
                Err(e @ CheckpointError::Io { .. }) => return Err(e),
                Err(e) => skipped(step, &e),
            }
        }
        Ok(None)
    }

    /// Deletes the checkpoint at `step`: the manifest first, so that what
    /// is left if this stops half way is an uncommitted checkpoint.
    pub async fn delete(&self, step: u64) -> Result<(), CheckpointError> {
        let at = self.location(step);
        let manifest_at = at.join(MANIFEST_FILE);
        match at.store().delete(manifest_at.path()).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(CheckpointError::store(&manifest_at, e)),
        }
        let paths: Vec<_> = at
            .store()
            .list(Some(at.path()))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await
            .map_err(|e| CheckpointError::store(&at, e))?;
        for path in paths {
            match at.store().delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(CheckpointError::store(&at, e)),
            }
        }
        Ok(())
    }

    fn missing_or_store(
        &self,
        step: u64,
        path: &str,
        at: &Location,
        error: object_store::Error,
    ) -> CheckpointError {
        match error {
            object_store::Error::NotFound { .. } => CheckpointError::Corrupt {
                checkpoint: self.location(step).name().to_string(),
                file: path.to_string(),
                message: "listed in the manifest but missing".into(),
            },
            e => CheckpointError::store(at, e),
        }
    }
}

/// Checks a file's bytes against its manifest entry as they stream by.
pub struct FileCheck<'a> {
    checkpoint: &'a str,
    expected: &'a ManifestFile,
    hasher: Sha256,
    bytes: u64,
}

impl<'a> FileCheck<'a> {
    pub fn new(checkpoint: &'a str, expected: &'a ManifestFile) -> FileCheck<'a> {
        FileCheck {
            checkpoint,
            expected,
            hasher: Sha256::new(),
            bytes: 0,
        }
    }

    pub fn update(&mut self, chunk: &[u8]) -> Result<(), CheckpointError> {
        self.bytes += chunk.len() as u64;
        if self.bytes > self.expected.bytes {
            return Err(self.corrupt(format!(
                "longer than the {} bytes the manifest lists",
                self.expected.bytes
            )));
        }
        self.hasher.update(chunk);
        Ok(())
    }

    /// The file's SHA-256, once its size and hash match the manifest.
    pub fn finish(self) -> Result<String, CheckpointError> {
        if self.bytes != self.expected.bytes {
            return Err(self.corrupt(format!(
                "{} bytes, but the manifest lists {}",
                self.bytes, self.expected.bytes
            )));
        }
        let actual = hex::encode(self.hasher.clone().finalize());
        if actual != self.expected.sha256 {
            return Err(self.corrupt(format!(
                "SHA-256 {actual} does not match the manifest's {}",
                self.expected.sha256
            )));
        }
        Ok(actual)
    }

    fn corrupt(&self, message: String) -> CheckpointError {
        CheckpointError::Corrupt {
            checkpoint: self.checkpoint.to_string(),
            file: self.expected.path.clone(),
            message,
        }
    }
}

/// The regular files of `folder` (not below it), sorted by name.
fn local_files(folder: &Path) -> Result<Vec<String>, CheckpointError> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(folder).map_err(|e| CheckpointError::io(folder, e))? {
        let entry = entry.map_err(|e| CheckpointError::io(folder, e))?;
        let kind = entry
            .file_type()
            .map_err(|e| CheckpointError::io(folder, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if kind.is_file() && name != MANIFEST_FILE {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

/// Uploads one local file to `at/name`, hashing it on the way.
async fn upload_file(
    at: &Location,
    file: &Path,
    name: &str,
) -> Result<ManifestFile, CheckpointError> {
    let target = at.join(name);
    let mut input = tokio::fs::File::open(file)
        .await
        .map_err(|e| CheckpointError::io(file, e))?;
    let size = input
        .metadata()
        .await
        .map_err(|e| CheckpointError::io(file, e))?
        .len();
    let mut hasher = Sha256::new();
    if size < MULTIPART_THRESHOLD {
        let mut bytes = Vec::with_capacity(size as usize);
        input
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| CheckpointError::io(file, e))?;
        hasher.update(&bytes);
        let bytes_len = bytes.len() as u64;
        target
            .store()
            .put(target.path(), PutPayload::from(bytes))
            .await
            .map_err(|e| CheckpointError::store(&target, e))?;
        return Ok(ManifestFile {
            path: name.to_string(),
            bytes: bytes_len,
            sha256: hex::encode(hasher.finalize()),
        });
    }
    let upload = target
        .store()
        .put_multipart(target.path())
        .await
        .map_err(|e| CheckpointError::store(&target, e))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut written = 0u64;
    loop {
        let mut part = vec![0u8; PART_BYTES];
        let mut filled = 0;
        while filled < part.len() {
            let n = match input.read(&mut part[filled..]).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(CheckpointError::io(file, e));
                }
            };
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        part.truncate(filled);
        hasher.update(&part);
        written += filled as u64;
        if let Err(e) = writer.wait_for_capacity(PART_CONCURRENCY).await {
            let _ = writer.abort().await;
            return Err(CheckpointError::store(&target, e));
        }
        writer.put(Bytes::from(part));
    }
    writer
        .finish()
        .await
        .map_err(|e| CheckpointError::store(&target, e))?;
    Ok(ManifestFile {
        path: name.to_string(),
        bytes: written,
        sha256: hex::encode(hasher.finalize()),
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
