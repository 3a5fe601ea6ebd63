//! A real SeaweedFS S3 server for lorafleet's tests.
//!
//! Object storage is where lorafleet keeps datasets, checkpoints and adapters,
//! so tests that cross that boundary talk to a real, independent S3 server
//! rather than a double: `weed mini` from SeaweedFS, which enforces request
//! signatures like the real thing.
//!
//! [`SeaweedFs::start`] starts one on free loopback ports, with a fresh
//! temporary data folder, random credentials and one bucket, and returns once
//! a signed put and get succeed (about 1.5 s). [`SeaweedFs::shared`] is one
//! instance for the whole test process, for tests that only need a prefix of
//! their own ([`SeaweedFs::url`]). A test reaches it in-process through
//! [`SeaweedFs::store`], or hands [`SeaweedFs::env`] to a lorafleet process,
//! which finds it through `AmazonS3Builder::from_env()`.
//!
//! # Lifetime
//!
//! Dropping an instance stops weed (SIGINT, SIGKILL after 5 s) and deletes
//! its data. weed never outlives the test process, even when nothing is
//! dropped (the shared instance, a panic, a killed test binary): every weed
//! is spawned from one thread that lives as long as the process and gets
//! `PR_SET_PDEATHSIG=SIGKILL`, and an `atexit` hook kills the shared
//! instance and deletes its data on a normal exit. The folders and sockets a
//! killed test process leaves behind are deleted by the next `start`.
//!
//! # Failure
//!
//! This is test code: everything panics, with weed's own output when weed is
//! at fault. weed is `$LORAFLEET_WEED`, else `.venv-s3/bin/weed` at the
//! workspace root; `scripts/test` installs it there.
//!
//! [`SeaweedFs::start_on`] starts one on a host of a [`netlab::Lab`]
//! instead, listening on the host's lab address.
//!
//! Not here: how the weed process is launched, kept from outliving the
//! test process and cleaned up after (`weed_process`); lorafleet's own
//! storage layer, which only ever sees an `object_store::ObjectStore` or
//! the environment.

use std::fs;
use std::process::{Child, ExitStatus};
use std::sync::{Arc, Mutex, Once, OnceLock, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig,
};
use rand::Rng;
use rand::distr::Alphanumeric;
use tempfile::TempDir;

use crate::netlab;
use crate::weed_process::{DIR_PREFIX, Ports, spawn_weed, sweep_orphans, weed_path, write_owner};

/// The one bucket of every instance, created by weed at startup.
pub(crate) const BUCKET: &str = "lorafleet-test";
const REGION: &str = "us-east-1";
/// How long weed gets to answer a signed put and get.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Starts on a fresh set of ports when weed exits during startup (a port
/// taken between picking it and weed binding it).
const START_ATTEMPTS: usize = 3;
/// How long weed gets to exit after SIGINT (it takes about 3 s).
const STOP_GRACE: Duration = Duration::from_secs(5);
/// How much of weed's stderr a panic message shows.
const STDERR_TAIL_LINES: usize = 40;

/// A running `weed mini` serving S3 on `127.0.0.1`; stopped on drop.
///
/// Each instance has its own ports, data folder, credentials and bucket, so
/// any number can run at once, in one process or several.
pub struct SeaweedFs {
    endpoint: String,
    bucket: String,
    access_key: String,
    secret_key: String,
    ports: Ports,
    /// The lab host it runs on; `None`: this machine's loopback.
    host: Option<netlab::Host>,
    /// `None` once stopped.
    running: Mutex<Option<Running>>,
}

struct Running {
    child: Child,
    /// Holds `data/` (weed's `-dir`), weed's stdout, stderr and log files.
    dir: TempDir,
}

static SHARED: OnceLock<SeaweedFs> = OnceLock::new();

impl SeaweedFs {
    /// Starts a new instance and waits until it serves signed requests.
    ///
    /// Safe to call from inside an async runtime (it blocks the calling
    /// thread for about 1.5 s).
    ///
    /// # Panics
    ///
    /// When weed cannot be found, does not start, or is not ready within 30 s.
    pub fn start() -> SeaweedFs {
        SeaweedFs::start_at(None)
    }

    /// As [`SeaweedFs::start`], on `host` of a network lab: weed runs there
    /// and listens on the host's lab address, which [`SeaweedFs::endpoint`]
    /// and [`SeaweedFs::env`] name. Only processes on lab hosts (and
    /// threads inside a host's namespace, see [`netlab::Lab::within`]) can
    /// reach it, [`SeaweedFs::store`] included.
    pub fn start_on(host: &netlab::Host) -> SeaweedFs {
        SeaweedFs::start_at(Some(host))
    }

    fn start_at(host: Option<&netlab::Host>) -> SeaweedFs {
        let ip = host.map_or("127.0.0.1", netlab::Host::ip);
        let weed = weed_path();
        let access_key = random_alnum(20);
        let secret_key = random_alnum(40);
        static SWEEP: Once = Once::new();
        SWEEP.call_once(sweep_orphans);
        let mut failures = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let ports = Ports::pick();
            let dir = tempfile::Builder::new()
                .prefix(DIR_PREFIX)
                .tempdir()
                .unwrap_or_else(|e| panic!("seaweedfs: cannot create a temporary folder: {e}"));
            write_owner(dir.path(), &ports);
            let child = spawn_weed(&weed, host, &ports, dir.path(), &access_key, &secret_key);
            let weed_fs = SeaweedFs {
                endpoint: format!("http://{ip}:{}", ports.s3),
                bucket: BUCKET.to_owned(),
                access_key: access_key.clone(),
                secret_key: secret_key.clone(),
                ports,
                host: host.cloned(),
                running: Mutex::new(Some(Running { child, dir })),
            };
            match weed_fs.wait_ready() {
                Ok(()) => return weed_fs,
                Err(NotReady::Exited(status)) => {
                    failures.push(format!(
                        "weed exited during startup ({status}); its stderr ends with:\n{}",
                        weed_fs.stderr_tail()
                    ));
                    // Drop cleans up; the next attempt uses other ports.
                }
                Err(NotReady::Timeout(last_error)) => {
                    let tail = weed_fs.stderr_tail();
                    weed_fs.stop(false);
                    panic!(
                        "seaweedfs at {} is not ready after {}s: last error: {last_error}\n\n\
                         weed's stderr ends with:\n{tail}",
                        weed_fs.endpoint,
                        READY_TIMEOUT.as_secs()
                    );
                }
            }
        }
        panic!(
            "seaweedfs did not start in {START_ATTEMPTS} attempts:\n\n{}",
            failures.join("\n\n")
        );
    }

    /// One instance for the whole test process, started on first use.
    ///
    /// Tests that share it must keep to their own prefixes. It is killed and
    /// its data deleted when the process exits.
    ///
    /// # Panics
    ///
    /// As [`SeaweedFs::start`]; a later call tries again.
    pub fn shared() -> &'static SeaweedFs {
        SHARED.get_or_init(|| {
            let weed_fs = SeaweedFs::start();
            // SAFETY: registers a plain `extern "C" fn` that does not unwind.
            // A failed registration only leaves the cleanup to PDEATHSIG.
            unsafe { libc::atexit(stop_shared_at_exit) };
            weed_fs
        })
    }

    /// The S3 endpoint, `http://127.0.0.1:PORT` (the lab address on a lab
    /// host).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bucket, which exists from the start.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The access key id weed accepts (random per instance).
    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    /// The secret key weed accepts (random per instance).
    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// `s3://BUCKET/prefix`: a location lorafleet's configuration accepts.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{}", self.bucket, prefix.trim_start_matches('/'))
    }

    /// The environment a lorafleet process needs to reach this server
    /// through `AmazonS3Builder::from_env()`.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", self.access_key.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.as_str()),
            ("AWS_REGION", REGION),
            ("AWS_ENDPOINT", self.endpoint.as_str()),
            ("AWS_ENDPOINT_URL", self.endpoint.as_str()),
            ("AWS_ALLOW_HTTP", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// A client for the bucket, with the right credentials.
    ///
    /// Unlike object_store's default (retries for up to 3 minutes), it gives
    /// up on a failing server after 10 s, so a test against a stopped
    /// server fails quickly.
    pub fn store(&self) -> Arc<dyn ObjectStore> {
        let retry = RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 3,
            retry_timeout: Duration::from_secs(10),
        };
        Arc::new(
            self.builder()
                .with_retry(retry)
                .build()
                .unwrap_or_else(|e| panic!("seaweedfs: cannot build an S3 client: {e}")),
        )
    }

    fn builder(&self) -> AmazonS3Builder {
        AmazonS3Builder::new()
            .with_endpoint(&self.endpoint)
            .with_bucket_name(&self.bucket)
            .with_region(REGION)
            .with_access_key_id(&self.access_key)
            .with_secret_access_key(&self.secret_key)
            .with_allow_http(true)
            .with_virtual_hosted_style_request(false)
    }

    /// Polls with a signed put and get of a small object until both work,
    /// weed exits, or [`READY_TIMEOUT`] passes.
    ///
    /// The probe runs on a thread of its own with a private runtime, so that
    /// callers inside a runtime are fine too.
    fn wait_ready(&self) -> Result<(), NotReady> {
        let store = self
            .builder()
            .with_retry(RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 0,
                retry_timeout: Duration::from_secs(1),
            })
            .with_client_options(
                ClientOptions::new()
                    .with_allow_http(true)
                    .with_connect_timeout(Duration::from_millis(500))
                    .with_timeout(Duration::from_secs(2)),
            )
            .build()
            .unwrap_or_else(|e| panic!("seaweedfs: cannot build an S3 client: {e}"));
        let key = ObjectPath::from(format!(".ready/{}", random_alnum(12)));
        let deadline = Instant::now() + READY_TIMEOUT;
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    if let Some(host) = &self.host {
                        host.enter_namespace().unwrap_or_else(|e| {
                            panic!("seaweedfs: cannot enter {}'s namespace: {e}", host.name())
                        });
                    }
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .unwrap_or_else(|e| panic!("seaweedfs: cannot build a runtime: {e}"));
                    loop {
                        if let Some(status) = self.exit_status() {
                            return Err(NotReady::Exited(status));
                        }
                        let Err(e) = rt.block_on(probe(&store, &key)) else {
                            return Ok(());
                        };
                        if Instant::now() >= deadline {
                            return Err(NotReady::Timeout(e));
                        }
                        thread::sleep(Duration::from_millis(50));
                    }
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// weed's exit status if it has exited.
    fn exit_status(&self) -> Option<ExitStatus> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let child = &mut running.as_mut()?.child;
        child.try_wait().ok().flatten()
    }

    fn stderr_tail(&self) -> String {
        let running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(running) = running.as_ref() else {
            return String::from("(weed is stopped)");
        };
        match fs::read_to_string(running.dir.path().join("weed.stderr")) {
            Ok(text) => {
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(STDERR_TAIL_LINES)..].join("\n")
            }
            Err(e) => format!("(cannot read weed's stderr: {e})"),
        }
    }

    /// Stops weed (SIGINT first when `graceful`, else SIGKILL at once) and
    /// deletes its data. Idempotent; never panics.
    fn stop(&self, graceful: bool) {
        let taken = self
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(Running { mut child, dir }) = taken else {
            return;
        };
        let mut exited = matches!(child.try_wait(), Ok(Some(_)));
        if graceful && !exited {
            if let Ok(pid) = libc::pid_t::try_from(child.id()) {
                // SAFETY: the child has not been reaped, so `pid` is still ours.
                unsafe { libc::kill(pid, libc::SIGINT) };
            }
            let deadline = Instant::now() + STOP_GRACE;
            while !exited && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(20));
                exited = matches!(child.try_wait(), Ok(Some(_)));
            }
        }
        if !exited {
            let _ = child.kill();
            let _ = child.wait();
        }
        // weed deletes its gRPC sockets on SIGINT, not on SIGKILL.
        for socket in self.ports.grpc_sockets() {
            let _ = fs::remove_file(socket);
        }
        let _ = dir.close();
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop(true);
    }
}

impl std::fmt::Debug for SeaweedFs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeaweedFs")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("access_key", &self.access_key)
            .finish_non_exhaustive()
    }
}

enum NotReady {
    Exited(ExitStatus),
    Timeout(String),
}

async fn probe(store: &impl ObjectStore, key: &ObjectPath) -> Result<(), String> {
    const BODY: &[u8] = b"ready";
    store
        .put(key, PutPayload::from_static(BODY))
        .await
        .map_err(|e| e.to_string())?;
    let got = store
        .get(key)
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    if got.as_ref() == BODY {
        Ok(())
    } else {
        Err(format!("{key}: read back {got:?}, wrote {BODY:?}"))
    }
}

extern "C" fn stop_shared_at_exit() {
    if let Some(weed_fs) = SHARED.get() {
        // Unwinding out of an `extern "C" fn` would abort the exit.
        let _ = std::panic::catch_unwind(|| weed_fs.stop(false));
    }
}

fn random_alnum(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
