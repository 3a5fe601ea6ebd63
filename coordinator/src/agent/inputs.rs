//! The worker's input cache: the files an assignment lists (uploaded
//! datasets, a base model's files) fetched from the coordinator with
//! `FetchInput`, checked against their SHA-256 and kept by it, so a file
//! is fetched once per worker however many jobs use it.
//!
//! The cache is `{work_dir}/inputs/{sha256}`: a file is written under a
//! temporary name, checked (size and SHA-256) and only then renamed, so a
//! name in the cache is a whole, verified file. Each attempt's rank sees
//! its inputs under the names the spec expects, as hard links in
//! `{work_dir}/assigned/{job}-{attempt}/{key}/`, and its spec names them.
//!
//! Not here: what the coordinator serves (`server::inputs`).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio_stream::StreamExt;

use crate::api;
use crate::client::Connection;
use job::spec::{JobSpec, ModelSpec, PathOrUrl, Validation};

use super::Shared;

/// The spec of assignment `a` with every input it lists fetched into the
/// cache and named by local paths.
pub(super) async fn prepare(
    shared: &Shared,
    connection: &Connection,
    a: &api::Assignment,
) -> Result<String, String> {
    if a.inputs.is_empty() {
        return Ok(a.spec_yaml.clone());
    }
    let work_dir = &shared.config.work_dir;
    let cache = work_dir.join("inputs");
    let assigned = work_dir
        .join("assigned")
        .join(format!("{}-{}", a.job_id, a.attempt));
    std::fs::create_dir_all(&cache)
        .map_err(|e| format!("cannot create {}: {e}", cache.display()))?;
    let mut spec = JobSpec::from_yaml(&a.spec_yaml, "job.yaml", "/")
        .map_err(|e| format!("the assigned spec does not read: {e}"))?;
    for input in &a.inputs {
        let cached = cache.join(checked_sha(&input.sha256)?);
        if !cached.is_file() {
            fetch(shared, connection, a, input, &cache, &cached).await?;
        }
        let folder = assigned.join(&input.key);
        let name = checked_name(&input.file_name)?;
        std::fs::create_dir_all(&folder)
            .map_err(|e| format!("cannot create {}: {e}", folder.display()))?;
        let local = folder.join(name);
        if !local.exists() && std::fs::hard_link(&cached, &local).is_err() {
            std::fs::copy(&cached, &local)
                .map_err(|e| format!("cannot copy {}: {e}", cached.display()))?;
        }
        let path = if input.in_folder { folder } else { local };
        replace(&mut spec, &input.key, path)?;
    }
    Ok(spec.to_yaml())
}

/// `sha` if it is a lowercase hex SHA-256 (it names a cache file).
fn checked_sha(sha: &str) -> Result<&str, String> {
    let ok = sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then_some(sha)
        .ok_or_else(|| format!("input {sha:?} is not a SHA-256"))
}

/// `name` if it is one plain file name.
fn checked_name(name: &str) -> Result<&str, String> {
    let ok = !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255;
    ok.then_some(name)
        .ok_or_else(|| format!("input file name {name:?} is not a plain file name"))
}

/// Points spec key `key` at the local `path`.
fn replace(spec: &mut JobSpec, key: &str, path: PathBuf) -> Result<(), String> {
    let place = PathOrUrl::Path(path);
    match key {
        "dataset.train" => spec.dataset.train = place,
        "dataset.validation" => spec.dataset.validation = Some(Validation::Data(place)),
        "model.path" => spec.model = ModelSpec::Path(place),
        other => return Err(format!("input for unknown spec key {other:?}")),
    }
    Ok(())
}

/// Fetches `input` into `cached`, checking its size and SHA-256.
async fn fetch(
    shared: &Shared,
    connection: &Connection,
    a: &api::Assignment,
    input: &api::InputFile,
    cache: &Path,
    cached: &Path,
) -> Result<(), String> {
    let what = format!("{} ({})", input.key, input.file_name);
    tracing::info!(
        "fetching {what}, {} bytes, from the coordinator",
        input.size_bytes
    );
    let request = api::FetchInputRequest {
        worker_id: shared.worker_id(),
        worker_secret: shared.worker_secret(),
        job_id: a.job_id.clone(),
        attempt: a.attempt,
        sha256: input.sha256.clone(),
    };
    let mut stream = connection
        .workers()
        .fetch_input(request)
        .await
        .map_err(|s| format!("cannot fetch {what}: {}", s.message()))?
        .into_inner();
    let partial = cache.join(format!(
        ".partial-{}-{}",
        input.sha256,
        rand::random::<u64>()
    ));
    let result = async {
        let mut file = tokio::fs::File::create(&partial)
            .await
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|s| format!("fetching {what}: {}", s.message()))?;
            size += chunk.data.len() as u64;
            if size > input.size_bytes {
                return Err(format!(
                    "fetching {what}: the coordinator sent more than its {} bytes",
                    input.size_bytes
                ));
            }
            hasher.update(&chunk.data);
            file.write_all(&chunk.data)
                .await
                .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        }
        file.sync_all()
            .await
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        let sha = hex::encode(hasher.finalize());
        if size != input.size_bytes || sha != input.sha256 {
            return Err(format!(
                "fetching {what}: got {size} bytes with SHA-256 {sha}, expected {} bytes with {}",
                input.size_bytes, input.sha256
            ));
        }
        tokio::fs::rename(&partial, cached)
            .await
            .map_err(|e| format!("cannot store {}: {e}", cached.display()))
    }
    .await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&partial).await;
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_the_coordinator_stay_inside_the_cache() {
        assert!(checked_name("config.json").is_ok());
        for bad in ["", ".", "..", "../x", "a/b", "a\\b"] {
            assert!(checked_name(bad).is_err(), "{bad}");
        }
        assert!(checked_sha(&"a".repeat(64)).is_ok());
        for bad in ["", "../../etc/passwd", &"A".repeat(64), &"a".repeat(63)] {
            assert!(checked_sha(bad).is_err(), "{bad}");
        }
    }
}
