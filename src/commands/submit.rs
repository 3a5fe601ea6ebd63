//! `lorafleet submit FILE [KEY=VALUE ...] [--wait]`: check a spec here,
//! with its overrides written in (errors point at the file's lines or name
//! the override), upload the local datasets and the local base model it
//! names to the coordinator (content-addressed: workers on other hosts
//! fetch them from there), and queue it: the text sent is the file's with
//! the overrides in it, so workers and `status` see the spec that ran.
//!
//! Not here: following a job (`logs::follow`), the embedded fleet (`run`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use coordinator::client::{Connection, Job, Submission, UploadPurpose};
use job::JobSpec;
use job::spec::{LoadedSpec, ModelSpec, PathOrUrl, Validation};

use super::logs::{final_outcome, follow};
use crate::cli::SubmitArgs;
use crate::connection::with_connection;
use crate::output::job_json;

pub fn run_submit(args: SubmitArgs) -> anyhow::Result<()> {
    // The spec is checked before anything is sent.
    let loaded = JobSpec::from_file_with_overrides(&args.file, &args.overrides)?;
    with_connection(&args.remote, async |conn| {
        let job = submit_loaded(conn, &args.file, &loaded, !args.shared_model).await?;
        if args.json {
            println!("{}", job_json(&job));
        } else {
            println!("submitted job {} ({})", job.id, job.name);
        }
        if !args.wait {
            return Ok(());
        }
        let job = follow(conn, &job.id, args.json).await?;
        final_outcome(&job)
    })
}

/// Uploads `file`'s local datasets, and with `upload_model` its local base
/// model, and submits it; returns the queued job.
pub async fn submit_spec(
    conn: &Connection,
    file: &Path,
    upload_model: bool,
) -> anyhow::Result<Job> {
    let spec = JobSpec::from_file(file)?;
    submit_parsed(conn, file, &spec, upload_model).await
}

/// [`submit_spec`] for `spec`, already read from `file` (a spec is parsed
/// once per process).
pub async fn submit_parsed(
    conn: &Connection,
    file: &Path,
    spec: &JobSpec,
    upload_model: bool,
) -> anyhow::Result<Job> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let loaded = LoadedSpec {
        spec: spec.clone(),
        text,
    };
    submit_loaded(conn, file, &loaded, upload_model).await
}

/// [`submit_spec`] for a spec read from `file` with its text (overrides
/// written in): that text is what the coordinator stores.
pub async fn submit_loaded(
    conn: &Connection,
    file: &Path,
    loaded: &LoadedSpec,
    upload_model: bool,
) -> anyhow::Result<Job> {
    let spec = &loaded.spec;
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
            let uploaded = conn
                .upload(path, UploadPurpose::Dataset)
                .await
                .with_context(|| format!("{key}: cannot upload {}", path.display()))?;
            datasets.insert(key.to_string(), uploaded.url);
        }
    }
    let (mut model_files, mut model_is_folder) = (Vec::new(), false);
    if upload_model && let ModelSpec::Path(PathOrUrl::Path(path)) = &spec.model {
        model_is_folder = path.is_dir();
        for (name, local) in model_files_of(path)? {
            let uploaded = conn
                .upload(&local, UploadPurpose::Model)
                .await
                .with_context(|| format!("model.path: cannot upload {}", local.display()))?;
            model_files.push((name, uploaded.url));
        }
    }
    let submission = Submission {
        spec_yaml: loaded.text.clone(),
        file_name: file.display().to_string(),
        base_dir: base_dir.display().to_string(),
        datasets,
        model_files,
        model_is_folder,
    };
    conn.submit(submission)
        .await
        .with_context(|| format!("the coordinator refused {}", file.display()))
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
