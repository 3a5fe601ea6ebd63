//! `MANIFEST.json`: the commit record of one checkpoint.
//!
//! It lists every file of the checkpoint with its size and SHA-256, and is
//! written after all of them, so a checkpoint whose manifest is missing was
//! never committed and one whose files disagree with it is corrupt. Not here:
//! reading or writing storage (`store`).

use serde::{Deserialize, Serialize};

/// What `format` says in every manifest this version writes.
pub const FORMAT: &str = "lorafleet-checkpoint/1";

/// The file name of the commit record.
pub const MANIFEST_FILE: &str = "MANIFEST.json";

/// One file of a checkpoint.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to the checkpoint folder, `/`-separated.
    pub path: String,
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
}

/// The commit record of the checkpoint at `step`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckpointManifest {
    pub format: String,
    pub step: u64,
    /// Seconds since the Unix epoch when the checkpoint was committed.
    pub created_at: i64,
    /// `{"train_loss": ..., "eval_loss": ...}` at that step.
    #[serde(default)]
    pub metrics: serde_json::Value,
    pub files: Vec<ManifestFile>,
    /// Who committed it, in the writer's words (a fleet's rank says its
    /// job and attempt); empty when unsaid.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub writer: String,
}

impl CheckpointManifest {
    /// The validation loss recorded at this step, if one was.
    pub fn eval_loss(&self) -> Option<f64> {
        self.metrics.get("eval_loss").and_then(|v| v.as_f64())
    }

    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }

    pub fn file(&self, path: &str) -> Option<&ManifestFile> {
        self.files.iter().find(|f| f.path == path)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a manifest serializes")
    }

    /// Parses a manifest and checks that it is one this version can read:
    /// a known format, the expected step, and file paths that stay inside
    /// the checkpoint.
    pub fn parse(bytes: &[u8], step: u64) -> Result<CheckpointManifest, String> {
        let manifest: CheckpointManifest =
            serde_json::from_slice(bytes).map_err(|e| format!("not a checkpoint manifest: {e}"))?;
        if manifest.format != FORMAT {
            return Err(format!(
                "format {:?} is not {FORMAT:?}; it was written by another version",
                manifest.format
            ));
        }
        if manifest.step != step {
            return Err(format!(
                "says step {} but is stored as step {step}",
                manifest.step
            ));
        }
        for file in &manifest.files {
            let bad = file.path.is_empty()
                || file.path.starts_with('/')
                || file
                    .path
                    .split('/')
                    .any(|p| p.is_empty() || p == "." || p == "..")
                || file.path == MANIFEST_FILE;
            if bad {
                return Err(format!("lists a file with a bad path {:?}", file.path));
            }
            if file.sha256.len() != 64 || !file.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("{}: {:?} is not a SHA-256", file.path, file.sha256));
            }
        }
        Ok(manifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(path: &str) -> CheckpointManifest {
        CheckpointManifest {
            format: FORMAT.into(),
            step: 7,
            created_at: 1,
            metrics: serde_json::json!({"train_loss": 2.5, "eval_loss": 2.25}),
            files: vec![ManifestFile {
                path: path.into(),
                bytes: 3,
                sha256: "a".repeat(64),
            }],
            writer: String::new(),
        }
    }

    #[test]
    fn a_manifest_reads_back() {
        let m = manifest("adapter_model.safetensors");
        let back = CheckpointManifest::parse(&m.to_json(), 7).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.eval_loss(), Some(2.25));
        assert_eq!(back.total_bytes(), 3);
    }

    #[test]
    fn foreign_or_hostile_manifests_are_refused() {
        let m = manifest("a.json");
        assert!(
            CheckpointManifest::parse(&m.to_json(), 8)
                .unwrap_err()
                .contains("stored as step 8")
        );
        for path in ["../x", "/etc/passwd", "a//b", "MANIFEST.json", ""] {
            let err = CheckpointManifest::parse(&manifest(path).to_json(), 7).unwrap_err();
            assert!(err.contains("bad path"), "{path}: {err}");
        }
        let mut other = manifest("a.json");
        other.format = "something/2".into();
        assert!(
            CheckpointManifest::parse(&other.to_json(), 7)
                .unwrap_err()
                .contains("another version")
        );
        assert!(
            CheckpointManifest::parse(b"{", 7)
                .unwrap_err()
                .contains("not a checkpoint manifest")
        );
    }
}
