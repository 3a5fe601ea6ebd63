//! Input files that live on the coordinator: the datasets and base-model
//! files a tenant uploaded. Workers on other hosts cannot see the
//! coordinator's disk, so an assignment lists these files
//! ([`api::InputFile`]: spec key, SHA-256, size, name) and each rank
//! fetches them with `Workers.FetchInput` before it starts.
//!
//! Uploads are content-addressed files, `datasets/{tenant}/{sha256}.{ext}`
//! under the data folder. A model folder a client uploaded file by file
//! becomes `datasets/{tenant}/models/{tree}/` (hard links to those files,
//! under their own names) beside `models/{tree}.json`, the list of its
//! files with their SHA-256; `{tree}` is the SHA-256 of that list.
//!
//! A file is served only to a rank of the job's current attempt, and only
//! if the job's own spec names it: what is opened is found from the spec,
//! never from the caller's words. Not here: receiving uploads (`jobs`),
//! the worker's cache (`agent::inputs`).

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tonic::Status;

use crate::api;
use job::spec::{JobSpec, ModelSpec, PathOrUrl, Validation};

/// The list of a model folder's files, beside the folder.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct ModelTree {
    pub files: Vec<TreeFile>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct TreeFile {
    pub name: String,
    pub sha256: String,
    pub size_bytes: u64,
}

/// One input of an assignment and where the coordinator reads it.
#[derive(Clone, Debug)]
pub(super) struct ServedInput {
    pub file: api::InputFile,
    pub path: PathBuf,
}

/// The inputs of `spec` that are uploads under `uploads` (the data
/// folder's `datasets/`): every spec key whose path lies there.
pub(super) fn assignment_inputs(
    spec: &JobSpec,
    uploads: &Path,
) -> Result<Vec<ServedInput>, String> {
    let mut named: Vec<(&str, &PathOrUrl)> = vec![("dataset.train", &spec.dataset.train)];
    if let Some(Validation::Data(v)) = &spec.dataset.validation {
        named.push(("dataset.validation", v));
    }
    if let ModelSpec::Path(p) = &spec.model {
        named.push(("model.path", p));
    }
    let mut inputs = Vec::new();
    for (key, place) in named {
        let PathOrUrl::Path(path) = place else {
            continue;
        };
        if !path.starts_with(uploads) {
            continue;
        }
        let tree_file = path.with_extension("json");
        if path.is_dir() {
            let tree = read_tree(&tree_file)?;
            for file in tree.files {
                inputs.push(ServedInput {
                    path: path.join(&file.name),
                    file: api::InputFile {
                        key: key.to_string(),
                        sha256: file.sha256,
                        size_bytes: file.size_bytes,
                        file_name: file.name,
                        in_folder: true,
                    },
                });
            }
        } else {
            let (file_name, sha256) = upload_name(path)
                .ok_or_else(|| format!("{key}: {} is not an upload", path.display()))?;
            let size_bytes = std::fs::metadata(path)
                .map_err(|e| format!("{key}: the upload {} is gone: {e}", path.display()))?
                .len();
            inputs.push(ServedInput {
                path: path.clone(),
                file: api::InputFile {
                    key: key.to_string(),
                    sha256,
                    size_bytes,
                    file_name,
                    in_folder: false,
                },
            });
        }
    }
    Ok(inputs)
}

/// Streams `input` in chunks of at most `CHUNK_BYTES`; the last chunk
/// carries its SHA-256. A file whose bytes no longer match its SHA-256
/// (damaged on the coordinator's disk) ends the stream with `DATA_LOSS`.
pub(super) fn file_stream(input: ServedInput) -> super::checkpoints::FileStream {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let name = input.file.file_name.clone();
        let fail = |status: Status| async {
            let _ = tx.send(Err(status)).await;
        };
        let mut file = match tokio::fs::File::open(&input.path).await {
            Ok(f) => f,
            Err(e) => return fail(Status::not_found(format!("input {name}: {e}"))).await,
        };
        let mut hasher = Sha256::new();
        let mut pending: Option<Vec<u8>> = None;
        loop {
            let mut data = vec![0u8; api::CHUNK_BYTES];
            let n = match file.read(&mut data).await {
                Ok(n) => n,
                Err(e) => return fail(Status::internal(format!("input {name}: {e}"))).await,
            };
            if n == 0 {
                break;
            }
            data.truncate(n);
            hasher.update(&data);
            if let Some(data) = pending.replace(data) {
                let chunk = api::FileChunk {
                    path: name.clone(),
                    data,
                    ..Default::default()
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
        }
        let sha256 = hex::encode(hasher.finalize());
        if sha256 != input.file.sha256 {
            return fail(Status::data_loss(format!(
                "input {name} on the coordinator no longer matches its SHA-256 {}",
                input.file.sha256
            )))
            .await;
        }
        let chunk = api::FileChunk {
            path: name,
            data: pending.unwrap_or_default(),
            sha256,
            step: 0,
        };
        let _ = tx.send(Ok(chunk)).await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

fn read_tree(path: &Path) -> Result<ModelTree, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("model.path: cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("model.path: {}: {e}", path.display()))
}

/// The file name of upload `path` and the SHA-256 it is named by
/// (`{sha256}.{ext}`); `None` if it is not named so.
fn upload_name(path: &Path) -> Option<(String, String)> {
    let file_name = path.file_name()?.to_string_lossy().into_owned();
    let sha256 = file_name.split('.').next()?.to_string();
    is_sha256(&sha256).then_some((file_name, sha256))
}

/// Whether `text` is a lowercase hex SHA-256.
pub(super) fn is_sha256(text: &str) -> bool {
    text.len() == 64
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `name` may be a file's name in a model folder: one plain
/// component, not hidden.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\', '\0'])
        && name.len() <= 255
}

/// Makes the model folder of the uploaded `files` (each `(name, upload
/// path)`, the paths already checked to be the tenant's uploads) under
/// `folder` (the tenant's uploads) and returns its path. The same files
/// give the same folder, made once.
pub(super) fn model_folder(folder: &Path, files: &[(String, PathBuf)]) -> Result<PathBuf, Status> {
    if files.is_empty() {
        return Err(Status::invalid_argument("model_files: no files"));
    }
    let mut tree = ModelTree { files: Vec::new() };
    for (name, path) in files {
        if !is_plain_file_name(name) {
            return Err(Status::invalid_argument(format!(
                "model_files: {name:?} is not a plain file name"
            )));
        }
        let Some((_, sha256)) = upload_name(path) else {
            return Err(Status::invalid_argument(format!(
                "model_files: {name}: {} is not an upload",
                path.display()
            )));
        };
        let size_bytes = std::fs::metadata(path)
            .map_err(|e| Status::not_found(format!("model_files: {name}: {e}")))?
            .len();
        tree.files.push(TreeFile {
            name: name.clone(),
            sha256,
            size_bytes,
        });
    }
    tree.files.sort_by(|a, b| a.name.cmp(&b.name));
    if tree.files.windows(2).any(|w| w[0].name == w[1].name) {
        return Err(Status::invalid_argument(
            "model_files: a file name appears twice",
        ));
    }
    let mut hasher = Sha256::new();
    for f in &tree.files {
        hasher.update(format!("{}\t{}\t{}\n", f.name, f.sha256, f.size_bytes));
    }
    let id = hex::encode(hasher.finalize());
    let models = folder.join("models");
    let dir = models.join(&id);
    let list = models.join(format!("{id}.json"));
    if list.is_file() && dir.is_dir() {
        return Ok(dir);
    }
    let internal =
        |e: std::io::Error| Status::internal(format!("cannot make the model folder: {e}"));
    // Built aside, then renamed: a folder under its final name is whole.
    let staging = models.join(format!(".building-{id}-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&staging).map_err(internal)?;
    let built = (|| {
        for (name, path) in files {
            let to = staging.join(name);
            if std::fs::hard_link(path, &to).is_err() {
                std::fs::copy(path, &to)?;
            }
        }
        let text = serde_json::to_vec_pretty(&tree).expect("a tree serialises");
        std::fs::write(&list, text)?;
        match std::fs::rename(&staging, &dir) {
            // Another submit of the same files got there first.
            Err(_) if dir.is_dir() => {
                std::fs::remove_dir_all(&staging)?;
                Ok(())
            }
            other => other,
        }
    })();
    if let Err(e) = built {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(internal(e));
    }
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upload(folder: &Path, bytes: &[u8], ext: &str) -> PathBuf {
        let sha = hex::encode(Sha256::digest(bytes));
        let path = folder.join(format!("{sha}.{ext}"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn a_model_folder_is_made_once_and_listed_by_content() {
        let dir = tempfile::tempdir().unwrap();
        let config = upload(dir.path(), b"{}", "json");
        let weights = upload(dir.path(), b"weights", "safetensors");
        let files = vec![
            ("config.json".to_string(), config.clone()),
            ("model.safetensors".to_string(), weights.clone()),
        ];
        let made = model_folder(dir.path(), &files).unwrap();
        assert_eq!(
            std::fs::read(made.join("model.safetensors")).unwrap(),
            b"weights"
        );
        let again = model_folder(dir.path(), &files).unwrap();
        assert_eq!(made, again);
        let tree = read_tree(&made.with_extension("json")).unwrap();
        let names: Vec<_> = tree.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["config.json", "model.safetensors"]);
        assert_eq!(
            tree.files[1].sha256,
            hex::encode(Sha256::digest(b"weights"))
        );
    }

    #[test]
    fn model_file_names_must_be_plain() {
        let dir = tempfile::tempdir().unwrap();
        let config = upload(dir.path(), b"{}", "json");
        for name in ["../config.json", "a/b", ".hidden", ""] {
            let err = model_folder(dir.path(), &[(name.to_string(), config.clone())]).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{name}");
        }
    }
}
