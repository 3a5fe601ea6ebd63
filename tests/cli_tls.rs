//! A fleet under TLS: `serve --tls-cert/--tls-key` with a certificate for
//! 127.0.0.1 signed by a CA made here (rcgen), a worker and `submit --wait`
//! that trust it with `--ca`/`LORAFLEET_CA` (and reconnect over TLS to the
//! coordinator killed and started again mid-job), and every way a client can
//! get it wrong refused with a sentence that says what to fix: no CA,
//! another CA, a certificate for another name or out of date, `http://`
//! against the TLS port, `http://` with a CA, `https://` against a plain
//! coordinator, and `serve` given a key it cannot use.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    date_time_ymd,
};

mod common;

use common::fleet::{CLUSTER_TOKEN, Fleet, short_spec, status, text};

const TOKEN: &str = "tenant-token-for-tls-tests";

/// A CA's PEM certificate and the means to sign with it.
struct TestCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    fn new(name: &str) -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let pem = params.self_signed(&key).unwrap().pem();
        TestCa {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names`, valid from `from` to `until`
    /// (years); its PEM certificate and key written into `dir`.
    fn issue(
        &self,
        dir: &Path,
        tag: &str,
        names: &[&str],
        years: (i32, i32),
    ) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "lorafleet coordinator");
        params.not_before = date_time_ymd(years.0, 1, 1);
        params.not_after = date_time_ymd(years.1, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let cert_path = dir.join(format!("{tag}.crt"));
        let key_path = dir.join(format!("{tag}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).unwrap();
        path.to_path_buf()
    }
}

/// Valid from 2000 to 2100.
const CURRENT: (i32, i32) = (2000, 2100);

/// `serve` with TLS, its state in `dir`, and `env` on the fleet's processes.
fn serve_tls(dir: &Path, cert: &Path, key: &Path, env: Vec<(String, String)>) -> Fleet {
    let tls = [
        OsStr::new("--tls-cert"),
        cert.as_os_str(),
        OsStr::new("--tls-key"),
        key.as_os_str(),
    ];
    Fleet::serve_with_args(&dir.join("state.db"), "127.0.0.1:0", TOKEN, env, &tls)
}

/// `lorafleet ARGS` as the tenant against `url`, with `ca` in
/// LORAFLEET_CA (none: unset).
fn client(url: &str, ca: Option<&Path>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lorafleet"));
    command
        .args(args)
        .env("LORAFLEET_COORDINATOR", url)
        .env("LORAFLEET_TOKEN", TOKEN)
        .env_remove("LORAFLEET_CA")
        .env("RUST_BACKTRACE", "0");
    if let Some(ca) = ca {
        command.env("LORAFLEET_CA", ca);
    }
    command.output().expect("the binary runs")
}

/// Asserts `out` failed with exit `code` and a message containing `words`.
fn assert_refused(out: &Output, code: i32, words: &str) {
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{stderr}");
    assert!(stderr.contains(words), "expected {words:?} in: {stderr}");
    eprintln!("refused as expected (exit {code}): {}", stderr.trim());
}

#[test]
fn a_fleet_under_tls_runs_a_job_and_refuses_clients_that_cannot_check_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = TestCa::new("lorafleet test CA");
    let ca_file = ca.write(&dir.join("ca.pem"));
    let (cert, key) = ca.issue(dir, "coordinator", &["127.0.0.1"], CURRENT);
    // Workers and clients trust the CA through the environment.
    let env = vec![("LORAFLEET_CA".into(), ca_file.display().to_string())];
    let mut fleet = serve_tls(dir, &cert, &key, env);
    let url = fleet.url.clone();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    fleet.add_worker("w0");
    fleet.wait_for_workers(1);

    // Long enough to restart the coordinator in the middle of.
    let spec = short_spec(dir, "tls", 1, &dir.join("unused"));
    let yaml = std::fs::read_to_string(&spec).unwrap();
    std::fs::write(&spec, yaml.replace("max_steps: 20", "max_steps: 60")).unwrap();
    let mut submitter = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args(["submit", spec.to_str().unwrap(), "--wait", "--json", "--ca"])
        .arg(&ca_file)
        .env("LORAFLEET_COORDINATOR", &url)
        .env("LORAFLEET_TOKEN", TOKEN)
        .env_remove("LORAFLEET_CA")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    let stdout = submitter.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut all = String::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line.clone());
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    // The worker and the follower reconnect over TLS to a coordinator
    // killed and started again mid-job.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !lines_rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("submit --wait prints events")
        .contains("train.step")
    {
        assert!(std::time::Instant::now() < deadline, "no training step");
    }
    fleet.kill_server();
    std::thread::sleep(std::time::Duration::from_secs(1));
    fleet.kill_and_restart_server();
    let bare = url.trim_start_matches("https://");
    let out = submitter.wait_with_output().unwrap();
    let lines = reader.join().unwrap();
    assert!(
        text(&out.stderr).contains("reconnected to the coordinator"),
        "{}",
        text(&out.stderr)
    );
    assert!(out.status.success(), "submit --wait: {}", text(&out.stderr));
    let job: serde_json::Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    let id = job["id"].as_str().unwrap();
    assert!(lines.contains("job.succeeded"), "{lines}");
    assert_eq!(status(&fleet, id)["status"], "succeeded");

    // A bare host:port with a CA means https://.
    let out = client(bare, Some(&ca_file), &["jobs"]);
    assert!(out.status.success(), "jobs: {}", text(&out.stderr));

    // No CA: the public roots do not know this one.
    let out = client(&url, None, &["status", id]);
    assert_refused(
        &out,
        3,
        "the coordinator's certificate is not signed by a public CA",
    );
    assert_refused(&out, 3, "--ca FILE or set LORAFLEET_CA");
    // Another CA.
    let other = TestCa::new("someone else's CA").write(&dir.join("other-ca.pem"));
    let out = client(&url, Some(&other), &["logs", id]);
    assert_refused(
        &out,
        3,
        &format!(
            "the coordinator's certificate is not signed by the CA in {}",
            other.display()
        ),
    );
    // Plain http:// against the TLS port, without and with a CA.
    let plain = url.replace("https://", "http://");
    let out = client(&plain, None, &["jobs"]);
    assert_refused(&out, 2, &format!("serves TLS: connect to https://{bare}"));
    let out = client(&plain, Some(&ca_file), &["jobs"]);
    assert_refused(&out, 2, "is plain http:// but a CA is given");
    // A CA file that is not there, or holds no certificate.
    let out = client(&url, Some(&dir.join("missing.pem")), &["jobs"]);
    assert_refused(&out, 2, "cannot read the CA bundle");
    let out = client(&url, Some(&key), &["jobs"]);
    assert_refused(&out, 2, "holds no PEM certificate");
    // A worker given http:// with a CA stops at once.
    let out = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args(["worker", "--coordinator", &plain, "--ca"])
        .arg(&ca_file)
        .env("LORAFLEET_CLUSTER_TOKEN", CLUSTER_TOKEN)
        .output()
        .unwrap();
    assert_refused(&out, 2, "is plain http:// but a CA is given");
}

#[test]
fn certificates_for_another_name_or_out_of_date_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = TestCa::new("lorafleet test CA");
    let ca_file = ca.write(&dir.join("ca.pem"));
    let cases = [
        (
            "other-name",
            vec!["coordinator.example"],
            CURRENT,
            "not valid for the name 127.0.0.1: it holds coordinator.example",
        ),
        (
            "expired",
            vec!["127.0.0.1"],
            (2000, 2020),
            "the coordinator's certificate expired at 2020-01-01T00:00:00Z",
        ),
        (
            "not-yet",
            vec!["127.0.0.1"],
            (2090, 2100),
            "the coordinator's certificate is valid only from 2090-01-01T00:00:00Z",
        ),
    ];
    for (tag, names, years, words) in cases {
        let sub = dir.join(tag);
        std::fs::create_dir_all(&sub).unwrap();
        let (cert, key) = ca.issue(&sub, tag, &names, years);
        let mut fleet = serve_tls(&sub, &cert, &key, Vec::new());
        let out = client(&fleet.url, Some(&ca_file), &["jobs"]);
        fleet.kill_server();
        assert_refused(&out, 3, words);
    }
}

#[test]
fn serve_names_the_tls_file_it_cannot_use() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = TestCa::new("lorafleet test CA");
    let (cert, key) = ca.issue(dir, "a", &["127.0.0.1"], CURRENT);
    let (_, other_key) = ca.issue(dir, "b", &["127.0.0.1"], CURRENT);
    let serve = |cert: &Path, key: &Path| {
        Command::new(env!("CARGO_BIN_EXE_lorafleet"))
            .args(["serve", "--listen", "127.0.0.1:0", "--state"])
            .arg(dir.join("state.db"))
            .arg("--tls-cert")
            .arg(cert)
            .arg("--tls-key")
            .arg(key)
            .env("LORAFLEET_TOKEN", TOKEN)
            .env("LORAFLEET_CLUSTER_TOKEN", CLUSTER_TOKEN)
            .output()
            .unwrap()
    };
    let missing = dir.join("missing.key");
    let out = serve(&cert, &missing);
    assert_refused(
        &out,
        2,
        &format!("cannot read the TLS key file {}", missing.display()),
    );
    let out = serve(&key, &key);
    assert_refused(&out, 2, "holds no PEM certificate");
    let out = serve(&cert, &cert);
    assert_refused(&out, 2, "holds no PEM private key");
    let out = serve(&cert, &other_key);
    assert_refused(
        &out,
        2,
        &format!(
            "the key in {} does not go with the certificate",
            other_key.display()
        ),
    );
    // --tls-cert without --tls-key is a usage error of clap's.
    let out = Command::new(env!("CARGO_BIN_EXE_lorafleet"))
        .args(["serve", "--tls-cert"])
        .arg(&cert)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn https_against_a_plain_coordinator_says_it_does_not_answer_in_tls() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut fleet = Fleet::serve(&dir.join("state.db"), "127.0.0.1:0", None, TOKEN);
    let url = fleet.url.clone();
    let ca = TestCa::new("lorafleet test CA").write(&dir.join("ca.pem"));
    let tls_url = url.replace("http://", "https://");
    let out = client(&tls_url, Some(&ca), &["jobs"]);
    fleet.kill_server();
    assert_refused(&out, 3, "did not answer in TLS");
    assert_refused(&out, 3, "plain http://");
}

#[test]
fn a_caller_that_never_finishes_its_handshake_is_dropped_and_others_get_in() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = TestCa::new("lorafleet test CA");
    let ca_file = ca.write(&dir.join("ca.pem"));
    let (cert, key) = ca.issue(dir, "coordinator", &["127.0.0.1"], CURRENT);
    let mut fleet = serve_tls(dir, &cert, &key, Vec::new());
    let url = fleet.url.clone();
    let address = url.trim_start_matches("https://");
    let idle: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(address).unwrap())
        .collect();
    // Callers that say nothing keep no one else out...
    let out = client(&url, Some(&ca_file), &["jobs"]);
    assert!(out.status.success(), "jobs: {}", text(&out.stderr));
    // ...and are closed once the handshake bound (10 s) has passed.
    let started = std::time::Instant::now();
    let mut first = &idle[0];
    first
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    use std::io::Read;
    let n = first.read(&mut [0u8; 16]).unwrap_or(0);
    let waited = started.elapsed();
    fleet.kill_server();
    assert_eq!(n, 0, "an idle caller got bytes");
    assert!(
        waited < std::time::Duration::from_secs(20),
        "an idle caller was kept {waited:?}"
    );
}

#[test]
fn the_http_api_answers_over_tls_to_clients_that_speak_only_http1() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = TestCa::new("lorafleet test CA");
    let ca_file = ca.write(&dir.join("ca.pem"));
    let (cert, key) = ca.issue(dir, "coordinator", &["127.0.0.1"], CURRENT);
    let mut fleet = serve_tls(dir, &cert, &key, Vec::new());
    // What the openai package's HTTP client offers: ALPN http/1.1 only.
    let script = r#"
import json, ssl, sys, urllib.request
url, ca, token = sys.argv[1:4]
context = ssl.create_default_context(cafile=ca)
context.set_alpn_protocols(["http/1.1"])
request = urllib.request.Request(url + "/v1/models", headers={"Authorization": "Bearer " + token})
with urllib.request.urlopen(request, context=context, timeout=30) as response:
    models = [m["id"] for m in json.load(response)["data"]]
    print(response.version, " ".join(models))
"#;
    let out = Command::new("python3")
        .args(["-c", script, &fleet.url])
        .arg(&ca_file)
        .arg(TOKEN)
        .output()
        .expect("python3 runs");
    // gRPC on the same port still works.
    let jobs = client(&fleet.url, Some(&ca_file), &["jobs"]);
    fleet.kill_server();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("11 "), "not HTTP/1.1: {stdout}");
    assert!(stdout.contains("tiny"), "{stdout}");
    assert!(jobs.status.success(), "jobs: {}", text(&jobs.stderr));
}
