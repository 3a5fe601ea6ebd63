//! Output folders that already hold a user's files: `download -o`, a
//! spec's `output.dir` (`train` and `run`) and `download --merged` write
//! their files and never delete or rewrite what lorafleet did not write.

use std::path::Path;

use crate::common::fleet::{Fleet, short_spec, submit, text, wait_until};
use crate::common::lorafleet;

/// A folder holding the user's own files; returns what they hold.
fn users_folder(dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(dir.join("drafts")).unwrap();
    let files = vec![
        ("notes.txt".to_string(), b"my notes".to_vec()),
        ("drafts/plan.md".to_string(), b"# plan".to_vec()),
    ];
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    files
}

fn assert_kept(dir: &Path, files: &[(String, Vec<u8>)], what: &str) {
    for (name, bytes) in files {
        let now = std::fs::read(dir.join(name))
            .unwrap_or_else(|e| panic!("{what}: {name} is gone from {}: {e}", dir.display()));
        assert_eq!(&now, bytes, "{what}: {name} was rewritten");
    }
}

#[test]
fn train_and_download_leave_the_users_files_in_their_output_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let out = dir.join("out");
    let mine = users_folder(&out);

    // `train` with output.dir = a folder of the user's, twice.
    let spec = short_spec(dir, "out", 1, &out);
    for round in 0..2 {
        let o = lorafleet(&["train", spec.to_str().unwrap()]);
        assert!(o.status.success(), "train: {}", text(&o.stderr));
        assert!(out.join("adapter_model.safetensors").is_file());
        assert_kept(&out, &mine, &format!("train, round {round}"));
    }

    // `download -o` into another folder of the user's, twice.
    let fleet = Fleet::serve(&dir.join("state.db"), "127.0.0.1:0", None, "outputs-token");
    let mut fleet = fleet;
    fleet.add_worker("w0");
    let job = submit(&fleet, &spec);
    wait_until(
        std::time::Duration::from_secs(120),
        "the job to end",
        || {
            let status = fleet.json(&["status", &job]);
            status["status"] == "succeeded" || status["status"] == "failed"
        },
    );
    let downloads = dir.join("downloads");
    let mine = users_folder(&downloads);
    for round in 0..2 {
        fleet.json(&["download", &job, "-o", downloads.to_str().unwrap()]);
        assert!(downloads.join("adapter_model.safetensors").is_file());
        assert!(downloads.join("MANIFEST.json").is_file());
        assert_kept(&downloads, &mine, &format!("download, round {round}"));
    }

    // `download --merged` into a third folder of the user's, twice.
    let merged = dir.join("merged");
    let mine_merged = users_folder(&merged);
    for round in 0..2 {
        fleet.json(&["download", &job, "--merged", "-o", merged.to_str().unwrap()]);
        assert!(merged.join("config.json").is_file());
        assert_kept(
            &merged,
            &mine_merged,
            &format!("download --merged, round {round}"),
        );
    }

    // Nothing is left inside or beside any of the folders: no staging
    // folder, no temporary file.
    for folder in [dir, &out, &downloads, &merged] {
        let leftovers: Vec<_> = std::fs::read_dir(folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(leftovers.is_empty(), "{}: {leftovers:?}", folder.display());
    }
}

#[test]
fn a_file_in_the_way_is_named_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // output.dir names the user's file.
    let out = dir.join("out");
    std::fs::write(&out, b"my file").unwrap();
    let spec = short_spec(dir, "in-the-way", 1, &out);
    let o = lorafleet(&["train", spec.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr).contains(&format!("{} exists and is not a folder", out.display())),
        "{}",
        text(&o.stderr)
    );
    assert_eq!(std::fs::read(&out).unwrap(), b"my file");

    // A folder of the user's where lorafleet writes a file: refused
    // before any file moves in.
    std::fs::remove_file(&out).unwrap();
    std::fs::create_dir_all(out.join("adapter_model.safetensors")).unwrap();
    std::fs::write(out.join("adapter_model.safetensors/mine.txt"), b"mine").unwrap();
    let o = lorafleet(&["train", spec.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(
        text(&o.stderr)
            .contains("is a folder, where lorafleet writes the file adapter_model.safetensors"),
        "{}",
        text(&o.stderr)
    );
    let names: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["adapter_model.safetensors"]);
    assert_eq!(
        std::fs::read(out.join("adapter_model.safetensors/mine.txt")).unwrap(),
        b"mine"
    );
}
