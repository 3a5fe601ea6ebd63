//! The lab's own checks: hosts look like separate machines, reach each
//! other, and cuts, heals and delays do what they say. Each skips with a
//! message where [`Lab::available`] says the machine cannot build a lab.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::Lab;

fn lab_or_skip(names: &[&str]) -> Option<Lab> {
    match Lab::available() {
        Ok(()) => Some(Lab::start(names)),
        Err(why) => {
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// A listener on `host` that answers every connection by echoing one
/// byte; its address.
fn echo_on(lab: &Lab, host: &str) -> SocketAddr {
    let ip = lab.host(host).ip().to_string();
    let listener = lab.within(host, move || TcpListener::bind((ip.as_str(), 0)).unwrap());
    let address = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut byte = [0u8; 1];
                while stream.read_exact(&mut byte).is_ok() {
                    if stream.write_all(&byte).is_err() {
                        break;
                    }
                }
            });
        }
    });
    address
}

/// Connects from `host` to `to` within `limit`; the connection.
fn connect_from(lab: &Lab, host: &str, to: SocketAddr, limit: Duration) -> Option<TcpStream> {
    lab.within(host, move || TcpStream::connect_timeout(&to, limit).ok())
}

#[test]
fn hosts_have_their_own_hostname_boot_id_and_shm() {
    let Some(lab) = lab_or_skip(&["h1", "h2"]) else {
        return;
    };
    let marker = lab.host("h1").private_dir().join("mine");
    std::fs::write(&marker, "h1 only").unwrap();
    let mut seen = Vec::new();
    for host in ["h1", "h2"] {
        let mut command = lab.host(host).command("sh");
        command.args([
            "-c",
            &format!(
                "hostname; cat /proc/sys/kernel/random/boot_id; ls /dev/shm | wc -l; cat {} 2>/dev/null || echo hidden",
                marker.display()
            ),
        ]);
        let out = lab.host(host).output(command, Duration::from_secs(10));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        seen.push(String::from_utf8(out.stdout).unwrap());
    }
    let lines: Vec<Vec<&str>> = seen.iter().map(|s| s.lines().collect()).collect();
    assert_eq!(lines[0][0], "h1");
    assert_eq!(lines[1][0], "h2");
    assert_ne!(lines[0][1], lines[1][1], "boot ids differ");
    let own = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_ne!(lines[0][1], own.trim());
    assert_eq!(lines[0][2], "0", "/dev/shm starts empty");
    assert_eq!(lines[0][3], "h1 only");
    assert_eq!(lines[1][3], "hidden", "h2 cannot see h1's folder");
}

#[test]
fn cuts_are_silent_and_heal() {
    let Some(lab) = lab_or_skip(&["a", "b", "c"]) else {
        return;
    };
    let at_b = echo_on(&lab, "b");
    let mut established =
        connect_from(&lab, "a", at_b, Duration::from_secs(2)).expect("a reaches b");
    established
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    established.write_all(b"x").unwrap();
    let mut byte = [0u8; 1];
    established.read_exact(&mut byte).unwrap();

    lab.cut_between("a", "b");
    let started = Instant::now();
    assert!(connect_from(&lab, "a", at_b, Duration::from_millis(700)).is_none());
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "silent: a timeout, not a refusal"
    );
    established.write_all(b"y").unwrap();
    assert!(
        established.read_exact(&mut byte).is_err(),
        "established traffic stalls"
    );
    assert!(
        connect_from(&lab, "c", at_b, Duration::from_secs(2)).is_some(),
        "c still reaches b"
    );

    lab.heal();
    established
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    established.read_exact(&mut byte).unwrap();
    assert_eq!(&byte, b"y", "the stalled byte arrives once healed");
    lab.cut_off("b");
    assert!(connect_from(&lab, "c", at_b, Duration::from_millis(500)).is_none());
    lab.heal_host("b");
    assert!(connect_from(&lab, "c", at_b, Duration::from_secs(2)).is_some());
}

#[test]
fn shape_delays_what_a_host_receives() {
    let Some(lab) = lab_or_skip(&["a", "b"]) else {
        return;
    };
    let at_b = echo_on(&lab, "b");
    let round_trip = |lab: &Lab| {
        let mut stream = connect_from(lab, "a", at_b, Duration::from_secs(2)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut byte = [0u8; 1];
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let start = Instant::now();
            stream.write_all(b"z").unwrap();
            stream.read_exact(&mut byte).unwrap();
            best = best.min(start.elapsed());
        }
        best
    };
    let before = round_trip(&lab);
    lab.shape("a", 100, Duration::from_millis(20));
    lab.shape("b", 100, Duration::from_millis(20));
    let after = round_trip(&lab);
    assert!(before < Duration::from_millis(10), "{before:?}");
    assert!(
        after >= Duration::from_millis(40) && after < Duration::from_millis(60),
        "two 20 ms receive delays make a 40 ms round trip, got {after:?}"
    );
    lab.shape("a", 100, Duration::from_millis(5));
    lab.shape("b", 100, Duration::from_millis(5));
    let again = round_trip(&lab);
    assert!(
        again >= Duration::from_millis(10) && again < Duration::from_millis(25),
        "shaping again replaces the delay: 2 × 5 ms, got {again:?}"
    );
}
