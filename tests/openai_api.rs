//! The OpenAI-compatible API driven by the real `openai` Python package
//! (tests/openai/client.py) against a coordinator and a worker on
//! 127.0.0.1: files, a job on the catalogue's `tiny` base followed to
//! success, paging, events, checkpoints, a download byte-identical to
//! `lorafleet download`'s, a cancel, OpenAI-shaped errors, and a second
//! tenant that finds none of the first's objects.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::fleet::{CLUSTER_TOKEN, Fleet, text};
use common::repo;

/// The interpreter with `openai` installed (scripts/test makes it).
fn python() -> String {
    std::env::var("LORAFLEET_PYTHON").expect(
        "LORAFLEET_PYTHON is not set: run the tests with scripts/test, which installs the openai package",
    )
}

fn hash(token: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(token.as_bytes()))
}

/// Two tenants, and a catalogue with the tiny random base.
fn config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("coordinator.yaml");
    let text = format!(
        "cluster_token_sha256: {}\n\
         tenants:\n  team-a:\n    token_sha256: {}\n    storage: [{a}]\n  \
         team-b:\n    token_sha256: {}\n    storage: [{b}]\n\
         models:\n  tiny:\n    preset: tiny\n    learning_rate: 2.0e-3\n    max_seq_len: 64\n    batch_size: 8\n    n_epochs: 1\n",
        hash(CLUSTER_TOKEN),
        hash("token-of-a"),
        hash("token-of-b"),
        a = dir.join("a").display(),
        b = dir.join("b").display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_openai_client_fine_tunes_downloads_and_cannot_cross_tenants() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = config(dir);
    let mut fleet = Fleet::serve(
        &dir.join("state.db"),
        "127.0.0.1:0",
        Some(&config),
        "token-of-a",
    );
    fleet.add_worker("w0");
    fleet.wait_for_workers(1);

    let api_out = dir.join("api-download");
    let run = Command::new(python())
        .arg(repo("tests/openai/client.py"))
        .args([&fleet.url, "token-of-a", "token-of-b"])
        .arg(repo("examples/data"))
        .arg(&api_out)
        .output()
        .expect("python runs");
    assert!(
        run.status.success(),
        "client.py failed:\n{}\n{}",
        text(&run.stdout),
        text(&run.stderr)
    );
    let summary: serde_json::Value =
        serde_json::from_str(text(&run.stdout).lines().last().unwrap()).unwrap();
    let job = summary["job"].as_str().unwrap();
    let step = summary["step"].as_u64().unwrap().to_string();

    // The same checkpoint through the CLI: byte for byte the same adapter.
    let cli_out = dir.join("cli-download");
    let out = fleet.cli(
        Some("token-of-a"),
        &[
            "download",
            job,
            "--step",
            &step,
            "-o",
            cli_out.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let name = "adapter_model.safetensors";
    let api = std::fs::read(api_out.join(name)).unwrap();
    let cli = std::fs::read(cli_out.join(name)).unwrap();
    assert!(!api.is_empty());
    assert!(
        api == cli,
        "the API's adapter differs from lorafleet download's"
    );
    drop(fleet);
}

/// One HTTP/1.1 request over a fresh connection: the status and body.
fn http(url: &str, request: &[u8]) -> (u16, String) {
    use std::io::{Read, Write};
    let address = url.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    // The server may answer and close before reading a refused body.
    let _ = stream.write_all(request);
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).to_string();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

fn request(method: &str, path: &str, token: Option<&str>, headers: &str, body: &[u8]) -> Vec<u8> {
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let mut bytes = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{auth}{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

#[test]
fn hostile_http_requests_are_refused_with_openai_errors_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let config = config(dir);
    let fleet = Fleet::serve(
        &dir.join("state.db"),
        "127.0.0.1:0",
        Some(&config),
        "token-of-a",
    );
    let a = Some("token-of-a");
    let error_type = |body: &str| -> String {
        let value: serde_json::Value = serde_json::from_str(body).expect(body);
        value["error"]["type"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };

    // No token, a wrong token.
    for token in [None, Some("not-a-token")] {
        let (status, body) = http(&fleet.url, &request("GET", "/v1/files", token, "", b""));
        assert_eq!(status, 401, "{body}");
        assert_eq!(error_type(&body), "invalid_request_error");
    }

    // A job request past the body bound (2 MiB) is refused unread.
    let huge = format!(
        "{{\"model\": \"tiny\", \"suffix\": \"{}\"}}",
        "x".repeat(3 << 20)
    );
    let json = "Content-Type: application/json\r\n";
    let (status, _) = http(
        &fleet.url,
        &request("POST", "/v1/fine_tuning/jobs", a, json, huge.as_bytes()),
    );
    assert_eq!(status, 413);
    // Not JSON; an unknown field.
    let (status, body) = http(
        &fleet.url,
        &request("POST", "/v1/fine_tuning/jobs", a, json, b"{\"model\": "),
    );
    assert_eq!(
        (status, error_type(&body).as_str()),
        (400, "invalid_request_error")
    );
    let unknown = br#"{"model": "tiny", "training_file": "f", "learning_rate": 1}"#;
    let (status, body) = http(
        &fleet.url,
        &request("POST", "/v1/fine_tuning/jobs", a, json, unknown),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"param\":\"learning_rate\""), "{body}");

    // A multipart body that is not one, and an upload cut off mid-file:
    // refused, and nothing is left in the upload folder.
    let multipart = "Content-Type: multipart/form-data; boundary=XyZ\r\n";
    let (status, body) = http(
        &fleet.url,
        &request(
            "POST",
            "/v1/files",
            a,
            multipart,
            b"garbage without a boundary",
        ),
    );
    assert_eq!(status, 400, "{body}");
    let head = "--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n\
                --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n\r\n";
    let mut cut = request("POST", "/v1/files", a, multipart, head.as_bytes());
    // Claim a megabyte more than is sent, then hang up.
    let claimed = format!("Content-Length: {}", head.len() + (1 << 20));
    let text = String::from_utf8(cut.clone()).unwrap();
    cut = text
        .replace(&format!("Content-Length: {}", head.len()), &claimed)
        .into_bytes();
    cut.extend_from_slice(&b"{\"text\": \"a\"}\n".repeat(100));
    {
        use std::io::Write;
        let mut stream =
            std::net::TcpStream::connect(fleet.url.trim_start_matches("http://")).unwrap();
        stream.write_all(&cut).unwrap();
    }
    let (status, body) = http(&fleet.url, &request("GET", "/v1/files", a, "", b""));
    assert_eq!(status, 200, "{body}");
    let files: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(files["data"].as_array().unwrap().len(), 0, "{body}");
    let uploads = dir.join("datasets").join("team-a");
    common::fleet::wait_until(
        Duration::from_secs(10),
        "the cut upload to be removed",
        || {
            std::fs::read_dir(&uploads)
                .map(|entries| entries.count() == 0)
                .unwrap_or(true)
        },
    );

    // Limits are clamped; an unknown cursor is not found.
    let (status, body) = http(
        &fleet.url,
        &request("GET", "/v1/fine_tuning/jobs?limit=4000000000", a, "", b""),
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(
        &fleet.url,
        &request("GET", "/v1/fine_tuning/jobs?after=job-none", a, "", b""),
    );
    assert_eq!(status, 404);
}
