//! `lorafleet download JOB [--step N|latest|best] -o DIR`: fetch one
//! checkpoint's files from the coordinator. Files land in a hidden staging
//! folder inside DIR, each checked against the SHA-256 the coordinator
//! sends, and move into DIR only once everything arrived intact, one
//! rename per file, leaving the user's other files in DIR alone
//! (`output_folder::Staging`); a path that would leave DIR is refused.
//! [`download_checkpoint`] is shared with `run`.
//!
//! Not here: which checkpoint `latest` or `best` means (the coordinator),
//! or merging an adapter into a model (`export`).

use std::collections::HashSet;
use std::fs::File;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

use anyhow::{Context, bail};
use coordinator::client::{Connection, FileChunk};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::output_folder::Staging;
use crate::cli::DownloadArgs;
use crate::connection::with_connection;

/// What a download wrote.
#[derive(Debug, Clone)]
pub struct DownloadSummary {
    pub job: String,
    pub step: u64,
    pub dir: PathBuf,
    pub files: Vec<DownloadedFile>,
}

/// One file of a downloaded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadedFile {
    /// Relative to the download folder, with `/` between parts.
    pub path: String,
    pub bytes: u64,
    /// Hex SHA-256 of the file, as checked.
    pub sha256: String,
}

impl DownloadSummary {
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    /// `download --json`'s object.
    pub fn to_json(&self) -> serde_json::Value {
        let files: Vec<_> = self
            .files
            .iter()
            .map(|f| json!({"path": f.path, "bytes": f.bytes, "sha256": f.sha256}))
            .collect();
        json!({
            "job": self.job,
            "step": self.step,
            "dir": self.dir.display().to_string(),
            "files": files,
        })
    }
}

pub fn run_download(args: DownloadArgs) -> anyhow::Result<()> {
    if args.merged {
        return download_merged(&args);
    }
    let summary = with_connection(&args.remote, async |conn| {
        download_checkpoint(conn, &args.job, &args.step, &args.output).await
    })?;
    if args.json {
        println!("{}", summary.to_json());
    } else {
        println!(
            "downloaded step {} ({} files, {} bytes) to {}",
            summary.step,
            summary.files.len(),
            summary.total_bytes(),
            summary.dir.display()
        );
    }
    Ok(())
}

/// `download --merged`: the checkpoint into a staging folder, then the
/// merged model into another, moved into the output folder file by file.
fn download_merged(args: &DownloadArgs) -> anyhow::Result<()> {
    let adapter = Staging::new(&args.output)?;
    let adapter_dir = adapter.path().join("adapter");
    let summary = with_connection(&args.remote, async |conn| {
        download_checkpoint(conn, &args.job, &args.step, &adapter_dir).await
    })?;
    let spec_path = adapter_dir.join("job.yaml");
    let text = std::fs::read_to_string(&spec_path)
        .with_context(|| format!("the checkpoint of job {} has no job.yaml", args.job))?;
    let spec = job::JobSpec::from_yaml(&text, "job.yaml", "/")?;
    let (source, _) = job::recipe::model_source(&spec)
        .context("--merged needs the job's base model on this machine")?;
    let merged = Staging::new(&args.output)?;
    let merged_what = super::export::write_merged(source, &adapter_dir, merged.path())?;
    drop(adapter);
    merged.install()?;
    if args.json {
        let mut out = summary.to_json();
        out["dir"] = json!(args.output.display().to_string());
        out["merged"] = json!(true);
        println!("{out}");
    } else {
        println!(
            "step {} of job {}: wrote {} with {merged_what}",
            summary.step,
            args.job,
            args.output.display()
        );
    }
    Ok(())
}

/// Downloads checkpoint `step` (a number, `latest` or `best`) of job
/// `job_id` into `dir`: every file is checked, then moved in, replacing
/// only files of the same name (see `output_folder`); nothing is moved in
/// if anything goes wrong.
pub async fn download_checkpoint(
    conn: &Connection,
    job_id: &str,
    step: &str,
    dir: &Path,
) -> anyhow::Result<DownloadSummary> {
    let staging = Staging::new(dir)?;
    let failed = || format!("cannot download checkpoint {step} of job {job_id}");
    let mut stream = conn.download(job_id, step).await.with_context(failed)?;
    let mut writer = CheckpointWriter::new(staging.path());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.with_context(failed)?;
        writer.accept(&chunk).with_context(failed)?;
    }
    let (step, files) = writer.finish().with_context(failed)?;
    staging.install()?;
    Ok(DownloadSummary {
        job: job_id.to_string(),
        step,
        dir: dir.to_path_buf(),
        files,
    })
}

/// Turns a stream of chunks into files under one folder, checking each
/// file's SHA-256 and refusing paths that would leave the folder.
pub struct CheckpointWriter {
    root: PathBuf,
    step: Option<u64>,
    open: Option<OpenFile>,
    done: Vec<DownloadedFile>,
    seen: HashSet<PathBuf>,
}

/// The file chunks are being written to.
struct OpenFile {
    name: String,
    file: File,
    hasher: Sha256,
    bytes: u64,
}

impl CheckpointWriter {
    pub fn new(root: &Path) -> CheckpointWriter {
        CheckpointWriter {
            root: root.to_path_buf(),
            step: None,
            open: None,
            done: Vec::new(),
            seen: HashSet::new(),
        }
    }

    /// Writes one chunk. A file's chunks come in a row; its last one
    /// carries the file's SHA-256.
    pub fn accept(&mut self, chunk: &FileChunk) -> anyhow::Result<()> {
        match self.step {
            None => self.step = Some(chunk.step),
            Some(step) if step != chunk.step => bail!(
                "the coordinator switched from step {step} to step {} mid-download",
                chunk.step
            ),
            Some(_) => {}
        }
        let relative = safe_relative_path(&chunk.path)?;
        let name = relative_name(&relative);
        let mut open = match self.open.take() {
            Some(open) if open.name == name => open,
            Some(open) => bail!(
                "{} ended without its SHA-256 (the download is incomplete)",
                open.name
            ),
            None => self.create(relative, name)?,
        };
        open.file
            .write_all(&chunk.data)
            .with_context(|| format!("cannot write {}", open.name))?;
        open.hasher.update(&chunk.data);
        open.bytes += chunk.data.len() as u64;
        match &chunk.sha256 {
            None => self.open = Some(open),
            Some(sha256) => self.done.push(open.close(sha256)?),
        }
        Ok(())
    }

    /// The checkpoint's step and files, once every file is complete.
    pub fn finish(mut self) -> anyhow::Result<(u64, Vec<DownloadedFile>)> {
        if let Some(open) = self.open.take() {
            bail!(
                "{} ended without its SHA-256 (the download is incomplete)",
                open.name
            );
        }
        let Some(step) = self.step else {
            bail!("the coordinator sent no files");
        };
        Ok((step, self.done))
    }

    fn create(&mut self, relative: PathBuf, name: String) -> anyhow::Result<OpenFile> {
        let path = self.root.join(&relative);
        if !self.seen.insert(relative) {
            bail!("the coordinator sent {name} twice");
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create the folder of {name}"))?;
        }
        let file =
            File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(OpenFile {
            name,
            file,
            hasher: Sha256::new(),
            bytes: 0,
        })
    }
}

impl OpenFile {
    fn close(mut self, expected: &str) -> anyhow::Result<DownloadedFile> {
        self.file
            .flush()
            .and_then(|()| self.file.sync_all())
            .with_context(|| format!("cannot write {}", self.name))?;
        let actual = hex::encode(self.hasher.finalize());
        if !actual.eq_ignore_ascii_case(expected.trim()) {
            bail!(
                "{} is corrupt: its SHA-256 is {actual} but the coordinator says {}",
                self.name,
                expected.trim()
            );
        }
        Ok(DownloadedFile {
            path: self.name,
            bytes: self.bytes,
            sha256: actual,
        })
    }
}

/// `path` as a relative path that stays inside the download folder, or an
/// error saying why it cannot be one.
pub fn safe_relative_path(path: &str) -> anyhow::Result<PathBuf> {
    let refuse =
        |why: &str| anyhow::anyhow!("refusing file path {path:?} from the coordinator: {why}");
    if path.contains('\\') || path.contains('\0') {
        return Err(refuse("it has a backslash or NUL"));
    }
    let mut relative = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::ParentDir => return Err(refuse("it contains `..`")),
            Component::RootDir | Component::Prefix(_) => return Err(refuse("it is absolute")),
        }
    }
    if relative.as_os_str().is_empty() {
        return Err(refuse("it names no file"));
    }
    Ok(relative)
}

/// A relative path written with `/` between its parts.
fn relative_name(relative: &Path) -> String {
    let parts: Vec<_> = relative.iter().map(|p| p.to_string_lossy()).collect();
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn chunk(path: &str, data: &[u8], sha256: &str) -> FileChunk {
        FileChunk {
            path: path.to_string(),
            data: data.to_vec(),
            sha256: (!sha256.is_empty()).then(|| sha256.to_string()),
            step: 40,
        }
    }

    #[test]
    fn paths_must_stay_inside_the_folder() {
        assert_eq!(
            safe_relative_path("adapter_model.safetensors").unwrap(),
            PathBuf::from("adapter_model.safetensors")
        );
        assert_eq!(
            safe_relative_path("./sub/a.json").unwrap(),
            PathBuf::from("sub/a.json")
        );
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a/..",
            "",
            ".",
            "a\\..\\b",
            "/",
        ] {
            let err = safe_relative_path(bad).unwrap_err();
            assert!(err.to_string().contains("refusing"), "{bad}: {err}");
        }
    }

    #[test]
    fn files_are_written_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = CheckpointWriter::new(dir.path());
        writer.accept(&chunk("a.json", b"{}", &sha(b"{}"))).unwrap();
        writer.accept(&chunk("sub/b.bin", b"hello ", "")).unwrap();
        writer
            .accept(&chunk(
                "sub/b.bin",
                b"world",
                &sha(b"hello world").to_uppercase(),
            ))
            .unwrap();
        writer.accept(&chunk("empty", b"", &sha(b""))).unwrap();
        let (step, files) = writer.finish().unwrap();
        assert_eq!(step, 40);
        let names: Vec<_> = files.iter().map(|f| (f.path.as_str(), f.bytes)).collect();
        assert_eq!(names, [("a.json", 2), ("sub/b.bin", 11), ("empty", 0)]);
        assert_eq!(
            std::fs::read(dir.path().join("sub/b.bin")).unwrap(),
            b"hello world"
        );
    }

    #[test]
    fn a_checksum_mismatch_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = CheckpointWriter::new(dir.path());
        writer
            .accept(&chunk("adapter.safetensors", b"abc", ""))
            .unwrap();
        let err = writer
            .accept(&chunk("adapter.safetensors", b"d", &sha(b"abc")))
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("adapter.safetensors") && text.contains("corrupt"),
            "{text}"
        );
    }

    #[test]
    fn incomplete_or_hostile_streams_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut writer = CheckpointWriter::new(dir.path());
        writer.accept(&chunk("a", b"x", "")).unwrap();
        let err = writer.accept(&chunk("b", b"y", &sha(b"y"))).unwrap_err();
        assert!(
            err.to_string().contains("a ended without its SHA-256"),
            "{err}"
        );

        let mut writer = CheckpointWriter::new(dir.path());
        writer.accept(&chunk("c", b"x", "")).unwrap();
        assert!(
            writer
                .finish()
                .unwrap_err()
                .to_string()
                .contains("incomplete")
        );

        let writer = CheckpointWriter::new(dir.path());
        assert!(
            writer
                .finish()
                .unwrap_err()
                .to_string()
                .contains("no files")
        );

        let mut writer = CheckpointWriter::new(dir.path());
        assert!(
            writer
                .accept(&chunk("../escape", b"x", &sha(b"x")))
                .is_err()
        );
        assert!(!dir.path().parent().unwrap().join("escape").exists());

        let mut writer = CheckpointWriter::new(dir.path());
        writer.accept(&chunk("d", b"x", &sha(b"x"))).unwrap();
        assert!(
            writer
                .accept(&chunk("d", b"x", &sha(b"x")))
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }
}
