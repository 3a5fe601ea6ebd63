//! The web console in a real browser: a coordinator and one worker on
//! 127.0.0.1 run a short job while headless Chromium, driven by
//! `tests/console/console.mjs` (playwright-core), signs in with the
//! tenant's token, follows the job to its end, checks its curves, downloads
//! a checkpoint file, lists the workers and is refused a wrong token.
//!
//! Needs node, `/usr/bin/chromium` and `tests/console/node_modules`
//! (`scripts/test` runs `npm ci --prefix tests/console` first). The
//! screenshot of the job's page is kept in `target/console-test/`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::fleet::{Fleet, short_spec, submit};
use common::repo;

const TOKEN: &str = "console-tenant-token-0123456789";
/// The browser's whole run, job included.
const BROWSER_LIMIT: Duration = Duration::from_secs(240);

/// `target/console-test/`, where the screenshots outlive the test.
fn kept_screenshots() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target folder")
        .join("console-test")
}

/// Runs `node tests/console/console.mjs URL TOKEN JOB OUT`, killed past
/// [`BROWSER_LIMIT`]; its stdout (the JSON line) and stderr.
fn drive_browser(url: &str, token: &str, job: &str, out: &Path) -> (bool, String, String) {
    let stdout_path = out.join("node.stdout");
    let stderr_path = out.join("node.stderr");
    let mut child = Command::new("node")
        .arg(repo("tests/console/console.mjs"))
        .args([url, token, job])
        .arg(out)
        .current_dir(repo("."))
        // Playwright's fresh Chromium profile goes inside the test's folder.
        .env("TMPDIR", out)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).unwrap())
        .stderr(File::create(&stderr_path).unwrap())
        .spawn()
        .expect("node runs (install node 20 or newer)");
    let start = Instant::now();
    // The script stops itself at 240 s; this is the last resort.
    let limit = BROWSER_LIMIT + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() > limit {
            child.kill().ok();
            child.wait().ok();
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let ok = status.is_some_and(|s| s.success());
    (ok, read(&stdout_path), read(&stderr_path))
}

#[test]
fn the_console_signs_in_follows_a_job_to_its_end_and_refuses_a_wrong_token() {
    let modules = repo("tests/console/node_modules/playwright-core");
    assert!(
        modules.is_dir(),
        "{} is missing: run scripts/test, which installs it with `npm ci --prefix tests/console`",
        modules.display()
    );
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut fleet = Fleet::serve(&dir.join("state.db"), "127.0.0.1:0", None, TOKEN);
    fleet.add_worker("console-w0");
    fleet.wait_for_workers(1);
    let spec = short_spec(dir, "console", 1, &dir.join("unused"));
    let job = submit(&fleet, &spec);

    let out = dir.join("browser");
    std::fs::create_dir_all(&out).unwrap();
    let (ok, stdout, stderr) = drive_browser(&format!("{}/", fleet.url), TOKEN, &job, &out);
    // Whatever happened, keep the pictures for a person to look at.
    let kept = kept_screenshots();
    std::fs::create_dir_all(&kept).unwrap();
    for name in ["console.png", "console-jobs.png", "console-workers.png"] {
        if out.join(name).is_file() {
            std::fs::copy(out.join(name), kept.join(name)).unwrap();
        }
    }
    assert!(ok, "the browser run failed:\n{stderr}\n{stdout}");

    let seen: serde_json::Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{e}: not the JSON line: {stdout}\n{stderr}"));
    assert_eq!(seen["job_status"], "succeeded", "{seen}");
    // The short spec runs 20 steps and validates every 10.
    assert_eq!(seen["train_points"], 20, "{seen}");
    assert_eq!(seen["lr_points"], 20, "{seen}");
    assert!(seen["valid_points"].as_u64().unwrap() >= 2, "{seen}");
    assert!(seen["events"].as_u64().unwrap() > 5, "{seen}");
    assert!(seen["checkpoint_files"].as_u64().unwrap() >= 1, "{seen}");
    assert!(seen["downloaded"]["bytes"].as_u64().unwrap() > 0, "{seen}");
    let workers = seen["workers"].as_array().unwrap();
    assert!(
        workers.iter().any(|w| w["name"] == "console-w0"),
        "{workers:?}"
    );
    assert_eq!(
        seen["login_error"], "the token is not valid for this coordinator",
        "{seen}"
    );
    assert!(kept.join("console.png").is_file());
}
