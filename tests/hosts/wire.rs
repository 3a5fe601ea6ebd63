//! What a host's kernel says about its connections: the TCP connections
//! of a process's network namespace (`/proc/PID/net/tcp`), and the files in
//! its `/dev/shm` (`/proc/PID/root/dev/shm`, seen through its mounts).
//!
//! Not here: starting processes or reading lorafleet's own output.

use std::net::Ipv4Addr;

/// An established TCP connection, `(local, remote)` as `IP:PORT`.
pub type Connection = ((Ipv4Addr, u16), (Ipv4Addr, u16));

/// The established IPv4 TCP connections in `pid`'s network namespace.
pub fn established(pid: u32) -> Vec<Connection> {
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st 01 is TCP_ESTABLISHED.
            if fields.get(3) != Some(&"01") {
                return None;
            }
            Some((endpoint(fields.get(1)?)?, endpoint(fields.get(2)?)?))
        })
        .collect()
}

/// `0B00A8C0:1F90` (the address in host byte order, little-endian here).
fn endpoint(text: &str) -> Option<(Ipv4Addr, u16)> {
    let (ip, port) = text.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some((Ipv4Addr::from(ip.to_le_bytes()), port))
}

/// The names in `/dev/shm` as process `pid` sees it.
pub fn shm_files(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/root/dev/shm"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Processes in the same network namespace as `pid` whose command line
/// contains `word` (a worker's ranks, seen from the test).
pub fn processes_beside(pid: u32, word: &str) -> Vec<u32> {
    let Ok(namespace) = std::fs::read_link(format!("/proc/{pid}/ns/net")) else {
        return Vec::new();
    };
    std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|other| {
                    std::fs::read_link(format!("/proc/{other}/ns/net"))
                        .ok()
                        .as_ref()
                        == Some(&namespace)
                })
                .filter(|other| {
                    std::fs::read(format!("/proc/{other}/cmdline"))
                        .map(|c| c.split(|b| *b == 0).any(|arg| arg == word.as_bytes()))
                        .unwrap_or(false)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn endpoints_read_as_the_kernel_writes_them() {
    assert_eq!(
        endpoint("0100007F:1F90"),
        Some((Ipv4Addr::new(127, 0, 0, 1), 8080))
    );
}
