//! Writing results into a folder the user named (`download -o DIR`, a
//! spec's `output.dir`, `download --merged`) without touching anything
//! else in it.
//!
//! Owns: [`Staging`], a hidden folder made inside DIR where a command
//! writes its whole result, then moves each file into place with one
//! rename (each synced first; same folder, so the same file system),
//! replacing only files of the same name, `MANIFEST.json` last. Every file
//! in DIR is thus either the old one or the whole new one, written once.
//! Files the user keeps there are never removed or rewritten; if any file
//! cannot go where it should (a folder or a file of the user's in the
//! way), nothing is moved. Not here: producing the files
//! (`download::CheckpointWriter`, `train`'s state writer).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::UsageError;

/// The file moved last, so that a folder whose manifest is new holds every
/// new file.
const LAST: &str = "MANIFEST.json";

/// How the staging folders inside an output folder are named.
pub const STAGING_PREFIX: &str = ".lorafleet-staging-";

/// Whether `dir` is a folder (or a link to one) to write into: `true`
/// if it is, `false` if nothing is there yet, a usage error if something
/// else is.
pub fn check(dir: &Path) -> anyhow::Result<bool> {
    match std::fs::metadata(dir) {
        Ok(meta) if meta.is_dir() => Ok(true),
        Ok(_) => bail!(UsageError(format!(
            "{} exists and is not a folder: name another",
            dir.display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot inspect {}", dir.display())),
    }
}

/// A staging folder inside an output folder, removed when dropped (with
/// the output folder too, if this made it and it is still empty).
pub struct Staging {
    dir: PathBuf,
    temp: Option<tempfile::TempDir>,
    /// `dir` did not exist before.
    made_dir: bool,
}

impl Staging {
    /// An empty staging folder inside `dir`, which is made if missing. A
    /// file (or anything but a folder, or a link to one) at `dir` is
    /// refused.
    pub fn new(dir: &Path) -> anyhow::Result<Staging> {
        let made_dir = !check(dir)?;
        if made_dir {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
        }
        // Made first, so that a failure below removes a folder it made.
        let mut staging = Staging {
            dir: dir.to_path_buf(),
            temp: None,
            made_dir,
        };
        staging.temp = Some(
            tempfile::Builder::new()
                .prefix(STAGING_PREFIX)
                .tempdir_in(dir)
                .with_context(|| format!("cannot write in {}", dir.display()))?,
        );
        Ok(staging)
    }

    /// Where to write the files.
    pub fn path(&self) -> &Path {
        self.temp.as_ref().map_or(&self.dir, |t| t.path())
    }

    /// Moves every file under the staging folder to the same place under
    /// the output folder: each is synced, then renamed over any file of
    /// that name. Other files stay as they are. Returns the files written,
    /// relative to the output folder.
    pub fn install(mut self) -> anyhow::Result<Vec<PathBuf>> {
        let staging = self.path().to_path_buf();
        let files = install(&staging, &self.dir)?;
        self.made_dir = false;
        Ok(files)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        drop(self.temp.take());
        if self.made_dir {
            // Fails, as it should, once anything is in it.
            let _ = std::fs::remove_dir(&self.dir);
        }
    }
}

/// Moves each file under `staging` to the same place under `dir`, after
/// checking that every one of them can go there.
fn install(staging: &Path, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    list_files(staging, Path::new(""), &mut files)?;
    // The manifest last; the rest in a fixed order.
    files.sort_by_key(|f| (f.as_os_str() == LAST, f.clone()));

    // Nothing moves unless everything can.
    let mut folders = BTreeSet::new();
    for relative in &files {
        let mut ancestors: Vec<&Path> = relative.ancestors().skip(1).collect();
        ancestors.retain(|a| !a.as_os_str().is_empty());
        for folder in ancestors {
            if let Ok(meta) = std::fs::metadata(dir.join(folder))
                && !meta.is_dir()
            {
                bail!(UsageError(format!(
                    "{} is a file of yours, where lorafleet writes the folder {}: move it away",
                    dir.join(folder).display(),
                    folder.display()
                )));
            }
            folders.insert(folder.to_path_buf());
        }
        let to = dir.join(relative);
        if std::fs::symlink_metadata(&to).is_ok_and(|m| m.is_dir()) {
            bail!(UsageError(format!(
                "{} is a folder, where lorafleet writes the file {}: move it away",
                to.display(),
                relative.display()
            )));
        }
    }

    for relative in &files {
        let from = staging.join(relative);
        let to = dir.join(relative);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::File::open(&from)
            .and_then(|f| f.sync_all())
            .with_context(|| format!("cannot write {}", to.display()))?;
        std::fs::rename(&from, &to).with_context(|| format!("cannot write {}", to.display()))?;
    }
    // The renames themselves are on disk once their folders are synced.
    for folder in folders
        .iter()
        .map(|f| dir.join(f))
        .chain([dir.to_path_buf()])
    {
        if let Ok(folder) = std::fs::File::open(folder) {
            let _ = folder.sync_all();
        }
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

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn files_are_added_and_replaced_and_the_users_stay() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("out");
        std::fs::create_dir_all(dir.join("notes")).unwrap();
        std::fs::write(dir.join("notes/mine.txt"), b"mine").unwrap();
        std::fs::write(dir.join("adapter_config.json"), b"old").unwrap();
        let staging = Staging::new(&dir).unwrap();
        assert!(staging.path().starts_with(&dir));
        std::fs::create_dir_all(staging.path().join("sub")).unwrap();
        std::fs::write(staging.path().join("adapter_config.json"), b"new").unwrap();
        std::fs::write(staging.path().join("sub/x.bin"), b"x").unwrap();
        std::fs::write(staging.path().join(LAST), b"{}").unwrap();
        let written = staging.install().unwrap();
        assert_eq!(written.last().unwrap(), Path::new(LAST));
        assert_eq!(written.len(), 3);
        assert_eq!(
            std::fs::read(dir.join("adapter_config.json")).unwrap(),
            b"new"
        );
        assert_eq!(std::fs::read(dir.join("sub/x.bin")).unwrap(), b"x");
        assert_eq!(std::fs::read(dir.join("notes/mine.txt")).unwrap(), b"mine");
        // Nothing is left inside or beside it.
        assert_eq!(names(&dir), [LAST, "adapter_config.json", "notes", "sub"]);
        assert_eq!(names(base.path()), ["out"]);
    }

    #[test]
    fn a_file_where_the_folder_should_be_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("out");
        std::fs::write(&dir, b"a file").unwrap();
        let err = Staging::new(&dir).err().unwrap().to_string();
        assert!(err.contains("not a folder"), "{err}");
        assert_eq!(std::fs::read(&dir).unwrap(), b"a file");
    }

    #[test]
    fn nothing_moves_when_one_file_cannot() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("out");
        std::fs::create_dir_all(dir.join("b.bin")).unwrap();
        std::fs::write(dir.join("sub"), b"mine").unwrap();
        for (blocked, message) in [
            (
                "b.bin",
                "is a folder, where lorafleet writes the file b.bin",
            ),
            (
                "sub/c.bin",
                "is a file of yours, where lorafleet writes the folder sub",
            ),
        ] {
            let staging = Staging::new(&dir).unwrap();
            std::fs::write(staging.path().join("a.bin"), b"a").unwrap();
            let blocked_path = staging.path().join(blocked);
            std::fs::create_dir_all(blocked_path.parent().unwrap()).unwrap();
            std::fs::write(blocked_path, b"new").unwrap();
            let err = staging.install().unwrap_err().to_string();
            assert!(err.contains(message), "{err}");
            assert_eq!(names(&dir), ["b.bin", "sub"]);
        }
        assert_eq!(std::fs::read(dir.join("sub")).unwrap(), b"mine");
    }

    #[test]
    fn a_folder_made_for_nothing_is_removed_and_a_link_to_one_is_followed() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("new/out");
        drop(Staging::new(&dir).unwrap());
        assert!(!dir.exists());
        // The user's folder behind a link is written through it.
        let real = base.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let staging = Staging::new(&link).unwrap();
        std::fs::write(staging.path().join("a.bin"), b"a").unwrap();
        staging.install().unwrap();
        assert_eq!(std::fs::read(real.join("a.bin")).unwrap(), b"a");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    }
}
