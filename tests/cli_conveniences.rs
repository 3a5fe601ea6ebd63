//! The command line's conveniences, driven through the built binary:
//! `key.path=value` spec overrides change what trains and is submitted,
//! and a bad one is named; `jobs --status` filters on the coordinator;
//! `status` shows the losses; `workers` and `checkpoints` page with
//! `--limit`/`--after`; the client config file fills what flags and
//! environment leave out; `completions` prints shell scripts.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

mod common;

use common::fleet::{Fleet, short_spec, status, submit, text, wait_until};
use common::{losses, spec_in};

/// The quickstart spec in `dir`, one thread.
fn quickstart(dir: &Path) -> std::path::PathBuf {
    spec_in(dir, "quickstart.yaml", |t| {
        t.replace("threads_per_worker: 2", "threads_per_worker: 1")
    })
}

/// `lorafleet ARGS` run in `cwd`.
fn lorafleet_in(cwd: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args(args)
        .current_dir(cwd)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("the binary runs")
}

#[test]
fn overrides_change_what_train_runs_and_a_bad_one_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let spec = quickstart(dir);
    let spec = spec.to_str().unwrap();
    // The spec says 150 steps; the override says 3, with the adapter
    // going to a folder relative to the current directory.
    let out = lorafleet_in(
        dir,
        &[
            "train",
            spec,
            "training.max_steps=3",
            "training.eval_every=0",
            "lora.target_modules=[q_proj, v_proj]",
            "output.dir=overridden",
        ],
    );
    assert!(out.status.success(), "train: {}", text(&out.stderr));
    let written = dir.join("overridden");
    assert_eq!(losses(&written).len(), 3, "one loss per step");
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(written.join("adapter_config.json")).unwrap())
            .unwrap();
    let mut modules: Vec<&str> = config["target_modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    modules.sort();
    assert_eq!(modules, ["q_proj", "v_proj"], "{config}");

    // A bad value names the override, and nothing trains.
    let out = lorafleet_in(
        dir,
        &[
            "train",
            spec,
            "training.max_steps=3",
            "lora.r=abc",
            "output.dir=bad",
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(
            "override 2 (lora.r=abc): lora.r: expected an integer between 1 and 1024, got \"abc\""
        ),
        "{stderr}"
    );
    assert!(!dir.join("bad").exists());
    // An unknown key gets the spec's did-you-mean; `validate` checks the same way.
    let out = lorafleet_in(dir, &["validate", spec, "lora.rr=4"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("override 1 (lora.rr=4): lora.rr: unknown key; did you mean r?"),
        "{}",
        text(&out.stderr)
    );
    // A problem in the file keeps its line, beside the override's.
    let broken = dir.join("broken.yaml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(spec)
            .unwrap()
            .replace("r: 16", "r: 0"),
    )
    .unwrap();
    let out = lorafleet_in(
        dir,
        &["validate", broken.to_str().unwrap(), "training.epochs=2"],
    );
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("broken.yaml:20:6: lora.r: must be between 1 and 1024, got 0"),
        "{stderr}"
    );
    assert!(
        stderr.contains("override 1 (training.epochs=2): training.epochs: conflicts with training.max_steps at line 27"),
        "{stderr}"
    );
}

/// The ids in a `{"data": [...]}` list.
fn ids(list: &serde_json::Value, key: &str) -> Vec<String> {
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| item[key].to_string().trim_matches('"').to_string())
        .collect()
}

#[test]
fn submitted_overrides_status_losses_status_filters_and_paged_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut fleet = Fleet::serve(&dir.join("state.db"), "127.0.0.1:0", None, "tenant-token");
    fleet.add_worker("w0");
    fleet.add_worker("w1");
    fleet.wait_for_workers(2);

    // Submitted with overrides: the coordinator stores and runs the
    // overridden spec (4 steps, a checkpoint every 2).
    let spec = short_spec(dir, "conveniences", 1, &dir.join("unused"));
    let spec = spec.to_str().unwrap();
    let done = fleet.json(&[
        "submit",
        spec,
        "training.max_steps=4",
        "checkpoint.every_steps=2",
        "training.eval_every=2",
    ]);
    let done_id = done["id"].as_str().unwrap().to_string();
    assert_eq!(done["total_steps"], 4, "{done}");
    wait_until(Duration::from_secs(120), "the job to end", || {
        let s = status(&fleet, &done_id);
        ["succeeded", "failed", "cancelled"].contains(&s["status"].as_str().unwrap())
    });
    let finished = status(&fleet, &done_id);
    assert_eq!(finished["status"], "succeeded", "{finished}");
    assert_eq!(finished["step"], 4);
    assert!(finished["train_loss"].as_f64().is_some(), "{finished}");
    assert!(finished["valid_loss"].as_f64().is_some(), "{finished}");
    assert!(
        finished["trained_tokens"].as_u64().unwrap() > 0,
        "{finished}"
    );
    for key in [
        "eta_seconds",
        "tokens_per_s",
        "created_at",
        "attempt",
        "error",
    ] {
        assert!(finished.get(key).is_some(), "no {key} in {finished}");
    }
    let human = fleet.cli(Some(&fleet.token), &["status", &done_id]);
    assert!(
        text(&human.stdout).contains("loss      train "),
        "{}",
        text(&human.stdout)
    );

    // Checkpoints page like jobs.
    let all = fleet.json(&["checkpoints", &done_id]);
    assert_eq!(ids(&all, "step"), ["2", "4"], "{all}");
    assert_eq!(all["has_more"], false);
    let first = fleet.json(&["checkpoints", &done_id, "--limit", "1"]);
    assert_eq!(ids(&first, "step"), ["2"]);
    assert_eq!(first["has_more"], true);
    let rest = fleet.json(&["checkpoints", &done_id, "--limit", "1", "--after", "2"]);
    assert_eq!(ids(&rest, "step"), ["4"]);
    assert_eq!(rest["has_more"], false);
    for key in ["step", "url", "metrics", "committed_at"] {
        assert!(rest["data"][0].get(key).is_some(), "no {key} in {rest}");
    }

    // Workers page too, each keeping its keys.
    let workers = fleet.json(&["workers"]);
    let worker_ids = ids(&workers, "id");
    assert_eq!(worker_ids.len(), 2, "{workers}");
    assert_eq!(workers["has_more"], false);
    let first = fleet.json(&["workers", "--limit", "1"]);
    assert_eq!(ids(&first, "id"), worker_ids[..1]);
    assert_eq!(first["has_more"], true);
    for key in ["id", "name", "state", "job_id", "last_heartbeat"] {
        assert!(first["data"][0].get(key).is_some(), "no {key} in {first}");
    }
    let second = fleet.json(&["workers", "--limit", "1", "--after", &worker_ids[0]]);
    assert_eq!(ids(&second, "id"), worker_ids[1..]);
    assert_eq!(second["has_more"], false);
    let out = fleet.cli(Some(&fleet.token), &["workers", "--after", "w-none"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // With every worker draining, new jobs stay queued; one is cancelled.
    for id in &worker_ids {
        fleet.json(&["drain", id]);
    }
    let cancelled = submit(&fleet, Path::new(spec));
    fleet.json(&["cancel", &cancelled]);
    let queued = submit(&fleet, Path::new(spec));
    let listed = |statuses: &[&str]| {
        let mut args = vec!["jobs"];
        args.extend_from_slice(statuses);
        ids(&fleet.json(&args), "id")
    };
    assert_eq!(
        listed(&[]),
        [queued.as_str(), cancelled.as_str(), done_id.as_str()]
    );
    assert_eq!(listed(&["--status", "queued"]), [queued.as_str()]);
    assert_eq!(
        listed(&["--status", "succeeded,cancelled"]),
        [cancelled.as_str(), done_id.as_str()]
    );
    assert_eq!(
        listed(&["--status", "queued", "--status", "succeeded"]),
        [queued.as_str(), done_id.as_str()]
    );
    let out = fleet.cli(Some(&fleet.token), &["jobs", "--status", "runing"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("'running'"),
        "{}",
        text(&out.stderr)
    );
    let table = fleet.cli(Some(&fleet.token), &["jobs"]);
    let header = text(&table.stdout);
    assert!(
        header.lines().next().unwrap().contains("TRAIN LOSS"),
        "{header}"
    );

    client_config_fills_what_flags_and_environment_leave_out(&fleet, dir, 3);
}

/// Runs `lorafleet ARGS` as a client with no coordinator settings but
/// `env`, HOME and XDG_CONFIG_HOME in `dir`.
fn client(dir: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lorafleet"));
    command
        .args(args)
        .env_remove("LORAFLEET_COORDINATOR")
        .env_remove("LORAFLEET_TOKEN")
        .env_remove("LORAFLEET_CA")
        .env_remove("LORAFLEET_CONFIG")
        .env("HOME", dir.join("home"))
        .env("XDG_CONFIG_HOME", dir.join("xdg"))
        .env("RUST_BACKTRACE", "0");
    for (key, value) in env {
        if value.is_empty() {
            command.env_remove(key);
        } else {
            command.env(key, value);
        }
    }
    command.output().expect("the binary runs")
}

fn write_config(path: &Path, text: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// The config file against `fleet`, whose tenant has `jobs` jobs.
fn client_config_fills_what_flags_and_environment_leave_out(
    fleet: &Fleet,
    dir: &Path,
    jobs: usize,
) {
    let listed = |out: &Output| -> usize {
        assert!(out.status.success(), "{}", text(&out.stderr));
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        list["data"].as_array().unwrap().len()
    };
    let dead = "http://127.0.0.1:1";
    // No file: no token.
    let out = client(dir, &[], &["jobs", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));

    // The file under XDG_CONFIG_HOME gives everything.
    let xdg_file = dir.join("xdg/lorafleet/config.yaml");
    let good = format!("coordinator: {}\ntoken: {}\n", fleet.url, fleet.token);
    write_config(&xdg_file, &good, 0o600);
    assert_eq!(listed(&client(dir, &[], &["jobs", "--json"])), jobs);

    // The environment beats the file, and a flag the environment.
    let out = client(dir, &[("LORAFLEET_TOKEN", "wrong")], &["jobs", "--json"]);
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let out = client(
        dir,
        &[("LORAFLEET_TOKEN", "wrong")],
        &["jobs", "--json", "--token", &fleet.token],
    );
    assert_eq!(listed(&out), jobs);
    let out = client(dir, &[("LORAFLEET_COORDINATOR", dead)], &["jobs", "--json"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    let out = client(
        dir,
        &[("LORAFLEET_COORDINATOR", dead)],
        &["jobs", "--json", "--coordinator", &fleet.url],
    );
    assert_eq!(listed(&out), jobs);
    write_config(
        &xdg_file,
        &format!("coordinator: {dead}\ntoken: {}\n", fleet.token),
        0o600,
    );
    let out = client(
        dir,
        &[("LORAFLEET_COORDINATOR", &fleet.url)],
        &["jobs", "--json"],
    );
    assert_eq!(listed(&out), jobs);

    // LORAFLEET_CONFIG names another file; without XDG_CONFIG_HOME the
    // file is under HOME.
    let named = dir.join("elsewhere.yaml");
    write_config(&named, &good, 0o600);
    let out = client(
        dir,
        &[("LORAFLEET_CONFIG", named.to_str().unwrap())],
        &["jobs", "--json"],
    );
    assert_eq!(listed(&out), jobs);
    let out = client(
        dir,
        &[(
            "LORAFLEET_CONFIG",
            dir.join("absent.yaml").to_str().unwrap(),
        )],
        &["jobs", "--json"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    write_config(
        &dir.join("home/.config/lorafleet/config.yaml"),
        &good,
        0o600,
    );
    let out = client(dir, &[("XDG_CONFIG_HOME", "")], &["jobs", "--json"]);
    assert_eq!(listed(&out), jobs);

    // A token others can read is refused; a bad file is named at its line.
    write_config(&xdg_file, &good, 0o644);
    let out = client(dir, &[], &["jobs", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );
    write_config(
        &xdg_file,
        &format!("coordinator: {}\ntokn: x\n", fleet.url),
        0o600,
    );
    let out = client(dir, &[], &["jobs", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let expected = format!("{}:2:", xdg_file.display());
    assert!(
        text(&out.stderr).contains(&expected),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn completions_print_a_script_for_each_shell() {
    let out = common::lorafleet(&["completions", "bash"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let script = text(&out.stdout);
    assert!(script.contains("submit"), "{script}");
    assert!(script.contains("complete -F"), "{script}");
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = common::lorafleet(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains("checkpoints"), "{shell}");
    }
    let out = common::lorafleet(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
}
