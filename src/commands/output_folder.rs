//! Writing results into a folder the user named (`download -o DIR`, a
//! spec's `output.dir`, `download --merged`) without touching anything
//! else in it.
//!
//! Owns: moving a complete set of files from a staging folder beside the
//! output folder into it, one atomic rename per file (each synced first),
//! replacing only files of the same name, `MANIFEST.json` last. Files the
//! user keeps there are never removed or rewritten. Not here: producing
//! the files (`download::CheckpointWriter`, `train`'s state writer).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The file moved last, so that a folder whose manifest is new holds every
/// new file.
const LAST: &str = "MANIFEST.json";

/// An empty folder beside `dir` (same file system, so its files can be
/// renamed into `dir`), removed when dropped.
pub fn staging_beside(dir: &Path) -> anyhow::Result<tempfile::TempDir> {
    let name = dir
        .file_name()
        .with_context(|| format!("{} is not a folder name to write into", dir.display()))?;
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    tempfile::Builder::new()
        .prefix(&format!(".{}.staging-", name.to_string_lossy()))
        .tempdir_in(parent)
        .with_context(|| format!("cannot create a staging folder in {}", parent.display()))
}

/// Moves every file under `staging` to the same place under `dir`
/// (created if missing): each is synced, then renamed over any file of
/// that name. Other files in `dir` stay as they are. Returns the files
/// written, relative to `dir`.
pub fn install(staging: &Path, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    match std::fs::symlink_metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            bail!("{} exists and is not a folder: name another", dir.display())
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?,
        Err(e) => return Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
    }
    let mut files = Vec::new();
    list_files(staging, Path::new(""), &mut files)?;
    // The manifest last; the rest in a fixed order.
    files.sort_by_key(|f| (f.as_os_str() == LAST, f.clone()));
    for relative in &files {
        let from = staging.join(relative);
        let to = dir.join(relative);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        if std::fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir()) {
            bail!(
                "{} is a folder, where lorafleet writes the file {}: move it away",
                to.display(),
                relative.display()
            );
        }
        std::fs::File::open(&from)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot write {}", to.display()))?;
        std::fs::rename(&from, &to).with_context(|| format!("cannot write {}", to.display()))?;
    }
    // The renames themselves are on disk once the folder is synced.
    if let Ok(folder) = std::fs::File::open(dir) {
        let _ = folder.sync_all();
    }
    Ok(files)
}

/// Every file below `root/under`, as paths relative to `root`.
fn list_files(root: &Path, under: &Path, out: &mut Vec<PathBuf>) -> anyhow::Result<()> {
    let folder = root.join(under);
    let entries =
        std::fs::read_dir(&folder).with_context(|| format!("cannot read {}", folder.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot read {}", folder.display()))?;
        let relative = under.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            list_files(root, &relative, out)?;
        } else {
            out.push(relative);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_added_and_replaced_and_the_users_stay() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("out");
        std::fs::create_dir_all(dir.join("notes")).unwrap();
        std::fs::write(dir.join("notes/mine.txt"), b"mine").unwrap();
        std::fs::write(dir.join("adapter_config.json"), b"old").unwrap();
        let staging = staging_beside(&dir).unwrap();
        std::fs::create_dir_all(staging.path().join("sub")).unwrap();
        std::fs::write(staging.path().join("adapter_config.json"), b"new").unwrap();
        std::fs::write(staging.path().join("sub/x.bin"), b"x").unwrap();
        std::fs::write(staging.path().join(LAST), b"{}").unwrap();
        let written = install(staging.path(), &dir).unwrap();
        assert_eq!(written.last().unwrap(), Path::new(LAST));
        assert_eq!(written.len(), 3);
        assert_eq!(
            std::fs::read(dir.join("adapter_config.json")).unwrap(),
            b"new"
        );
        assert_eq!(std::fs::read(dir.join("sub/x.bin")).unwrap(), b"x");
        assert_eq!(std::fs::read(dir.join("notes/mine.txt")).unwrap(), b"mine");
        drop(staging);
        // Nothing is left beside it.
        let entries: Vec<_> = std::fs::read_dir(base.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(entries, ["out"]);
    }

    #[test]
    fn a_file_where_the_folder_should_be_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("out");
        std::fs::write(&dir, b"a file").unwrap();
        let staging = staging_beside(&dir).unwrap();
        std::fs::write(staging.path().join("a"), b"a").unwrap();
        let err = install(staging.path(), &dir).unwrap_err().to_string();
        assert!(err.contains("not a folder"), "{err}");
        assert_eq!(std::fs::read(&dir).unwrap(), b"a file");
    }
}
