//! `SeaweedFs` against the real weed: isolation, authentication, shutdown.

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use object_store::aws::AmazonS3Builder;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use testkit::SeaweedFs;

/// Two instances started at once in one process have their own ports,
/// credentials and data.
#[tokio::test]
async fn parallel_instances_are_independent() {
    let started = Instant::now();
    let (a, b) = thread::scope(|scope| {
        let a = scope.spawn(SeaweedFs::start);
        let b = scope.spawn(SeaweedFs::start);
        (a.join().unwrap(), b.join().unwrap())
    });
    eprintln!("two instances ready in {:.2?}", started.elapsed());
    assert_ne!(a.endpoint(), b.endpoint());
    assert_ne!(a.access_key(), b.access_key());

    let key = Path::from("isolation/only-in-a");
    a.store()
        .put(&key, PutPayload::from_static(b"a"))
        .await
        .unwrap();
    let got = a.store().get(&key).await.unwrap().bytes().await.unwrap();
    assert_eq!(got.as_ref(), b"a");
    let err = b.store().get(&key).await.unwrap_err();
    assert!(
        matches!(err, object_store::Error::NotFound { .. }),
        "expected NotFound from the other instance, got {err:?}"
    );
}

/// weed checks signatures: the right key id with a wrong secret is refused.
#[tokio::test]
async fn wrong_secret_is_refused() {
    let s3 = SeaweedFs::shared();
    let wrong = AmazonS3Builder::new()
        .with_endpoint(s3.endpoint())
        .with_bucket_name(s3.bucket())
        .with_region("us-east-1")
        .with_access_key_id(s3.access_key())
        .with_secret_access_key("0".repeat(40))
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .build()
        .unwrap();
    let key = Path::from("auth/wrong-secret");
    let err = wrong
        .put(&key, PutPayload::from_static(b"x"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }
        ),
        "expected PermissionDenied, got {err:?}"
    );

    // The right secret works, and nothing was written by the refused put.
    let store = s3.store();
    assert!(matches!(
        store.head(&key).await,
        Err(object_store::Error::NotFound { .. })
    ));
    store
        .put(&key, PutPayload::from_static(b"x"))
        .await
        .unwrap();
}

/// `env()` and `url()` describe the same server that `store()` reaches.
#[test]
fn env_and_url_describe_the_server() {
    let s3 = SeaweedFs::shared();
    let env = s3.env();
    let get = |name: &str| {
        env.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name} missing from env()"))
    };
    assert_eq!(get("AWS_ACCESS_KEY_ID"), s3.access_key());
    assert_eq!(get("AWS_SECRET_ACCESS_KEY"), s3.secret_key());
    assert_eq!(get("AWS_REGION"), "us-east-1");
    assert_eq!(get("AWS_ENDPOINT"), s3.endpoint());
    assert_eq!(get("AWS_ENDPOINT_URL"), s3.endpoint());
    assert_eq!(get("AWS_ALLOW_HTTP"), "true");
    assert!(s3.endpoint().starts_with("http://127.0.0.1:"));
    assert!(s3.access_key().len() >= 16);
    assert!(s3.access_key().chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(s3.secret_key().len(), 40);
    assert_eq!(
        s3.url("jobs/7/adapter"),
        format!("s3://{}/jobs/7/adapter", s3.bucket())
    );
}

/// Once dropped, nothing listens on the endpoint any more.
#[test]
fn drop_stops_the_server() {
    let s3 = SeaweedFs::start();
    let addr = s3
        .endpoint()
        .strip_prefix("http://")
        .unwrap()
        .parse::<std::net::SocketAddr>()
        .unwrap();
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).expect("weed answers before drop");

    let started = Instant::now();
    drop(s3);
    eprintln!("stopped in {:.2?}", started.elapsed());
    let err = TcpStream::connect_timeout(&addr, Duration::from_secs(1))
        .expect_err("weed still answers after drop");
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
}

/// Starting blocks on its own thread, so async tests may call it directly.
#[tokio::test]
async fn start_works_inside_a_runtime() {
    let store: std::sync::Arc<dyn ObjectStore> = SeaweedFs::shared().store();
    let key = Path::from("runtime/probe");
    store
        .put(&key, PutPayload::from_static(b"ok"))
        .await
        .unwrap();
}
