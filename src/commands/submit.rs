//! `lorafleet submit FILE [--wait]`: check a spec here (errors point at the
//! file's lines), upload the local datasets and the local base model it
//! names to the coordinator (content-addressed: workers on other hosts
//! fetch them from there), and queue it.
//!
//! Not here: following a job (`logs::follow`), the embedded fleet (`run`).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use coordinator::api::{CHUNK_BYTES, DatasetChunk, Job, SubmitRequest, UploadedFile};
use coordinator::client::Connection;
use job::JobSpec;
use job::spec::{ModelSpec, PathOrUrl, Validation};

use super::logs::{final_outcome, follow};
use super::remote::{self, RemoteArgs, rpc};

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The YAML job spec.
    pub file: std::path::PathBuf,
    /// Follow the job until it ends (exit 1 if it fails or is cancelled),
    /// riding out a coordinator restart as `logs -f` does: retried 0.5 s,
    /// then 1, 2, 4 and every 5 s after, for up to 120 s (then exit 3).
    #[arg(long)]
    pub wait: bool,
    /// Print the job object (and with --wait, the events as NDJSON).
    #[arg(long)]
    pub json: bool,
    /// model.path is a local path every worker can read as it is (a shared
    /// mount): send the path, not the model. Without it, a local model is
    /// uploaded (a GGUF file, or a Hugging Face folder's .json,
    /// .safetensors, .jinja, .txt and tokenizer.model files).
    #[arg(long)]
    pub shared_model: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

pub fn run_submit(args: SubmitArgs) -> anyhow::Result<()> {
    // The spec is checked before anything is sent.
    JobSpec::from_file(&args.file)?;
    remote::block_on(async {
        let conn = remote::connect(&args.remote).await?;
        let job = submit_spec(&conn, &args.file, !args.shared_model).await?;
        if args.json {
            println!("{}", remote::job_json(&job));
        } else {
            println!("submitted job {} ({})", job.id, job.name);
        }
        if !args.wait {
            return Ok(());
        }
        let job = follow(&conn, &job.id, args.json).await?;
        final_outcome(&job)
    })
}

/// Uploads `file`'s local datasets and submits it; returns the queued job.
/// The model is named by its path (workers on this host read it).
pub async fn submit_file(conn: &Connection, file: &Path) -> anyhow::Result<Job> {
    submit_spec(conn, file, false).await
}

/// Uploads `file`'s local datasets, and with `upload_model` its local base
/// model, and submits it; returns the queued job.
pub async fn submit_spec(
    conn: &Connection,
    file: &Path,
    upload_model: bool,
) -> anyhow::Result<Job> {
    let spec = JobSpec::from_file(file)?;
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let base_dir = std::path::absolute(file)?
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| "/".into());
    let mut locals = vec![("dataset.train", &spec.dataset.train)];
    if let Some(Validation::Data(v)) = &spec.dataset.validation {
        locals.push(("dataset.validation", v));
    }
    let format: trainer::data::Format = spec.dataset.format.name().parse()?;
    let mut datasets = HashMap::new();
    for (key, place) in locals {
        if let PathOrUrl::Path(path) = place {
            // Every record is checked here first (FILE:LINE, the record
            // size limit included), so nothing bad is sent.
            let location = path.display().to_string();
            tokio::task::spawn_blocking(move || {
                let source = trainer::data::DataSource::parse(&location)?;
                trainer::data::check_records(&source, format)
            })
            .await?
            .with_context(|| format!("{key}: {} cannot be used", path.display()))?;
            let url = upload(conn, path, "dataset")
                .await
                .with_context(|| format!("{key}: cannot upload {}", path.display()))?;
            datasets.insert(key.to_string(), url);
        }
    }
    let (mut model_files, mut model_is_folder) = (Vec::new(), false);
    if upload_model && let ModelSpec::Path(PathOrUrl::Path(path)) = &spec.model {
        model_is_folder = path.is_dir();
        for (name, local) in model_files_of(path)? {
            let url = upload(conn, &local, "model")
                .await
                .with_context(|| format!("model.path: cannot upload {}", local.display()))?;
            model_files.push(UploadedFile { name, url });
        }
    }
    let request = SubmitRequest {
        spec_yaml: text,
        file_name: file.display().to_string(),
        base_dir: base_dir.display().to_string(),
        datasets,
        version: coordinator::PROTOCOL_VERSION.to_string(),
        model_files,
        model_is_folder,
    };
    let job = conn
        .jobs()
        .submit(request)
        .await
        .map_err(rpc)
        .with_context(|| format!("the coordinator refused {}", file.display()))?;
    Ok(job.into_inner())
}

/// The files of the local model at `path` to upload, with their names: the
/// file itself, or the files of a Hugging Face folder that a model is read
/// from (configs, weights, tokenizer, chat template), hidden ones left out.
fn model_files_of(path: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let name_of = |p: &Path| {
        p.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    if !path.is_dir() {
        return Ok(vec![(name_of(path), path.to_path_buf())]);
    }
    let mut files = Vec::new();
    let listing = std::fs::read_dir(path)
        .with_context(|| format!("model.path: cannot read {}", path.display()))?;
    for entry in listing {
        let file = entry?.path();
        let name = name_of(&file);
        let wanted = name == "tokenizer.model"
            || [".json", ".safetensors", ".jinja", ".txt"]
                .iter()
                .any(|ext| name.ends_with(ext));
        if file.is_file() && wanted && !name.starts_with('.') {
            files.push((name, file));
        }
    }
    files.sort();
    if files.is_empty() {
        anyhow::bail!("model.path: {} holds no model files", path.display());
    }
    Ok(files)
}

/// Streams a local file to the coordinator (`purpose`: `dataset` or
/// `model`); returns where it was stored.
async fn upload(conn: &Connection, path: &Path, purpose: &str) -> anyhow::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let purpose = purpose.to_string();
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let mut first = true;
        loop {
            let mut data = vec![0u8; CHUNK_BYTES];
            let n = file.read(&mut data)?;
            if n == 0 && !first {
                return Ok(());
            }
            data.truncate(n);
            let chunk = DatasetChunk {
                file_name: if first { name.clone() } else { String::new() },
                data,
                purpose: if first {
                    purpose.clone()
                } else {
                    String::new()
                },
            };
            first = false;
            if tx.blocking_send(chunk).is_err() || n == 0 {
                return Ok(());
            }
        }
    });
    let reply = conn
        .jobs()
        .upload_dataset(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(rpc);
    reader.await??;
    Ok(reply?.into_inner().url)
}
