//! What both shared-memory transports stand on: files under `/dev/shm`
//! mapped by several processes, futex waits and wakes on words inside
//! them, and noticing that a peer's process is gone.
//!
//! Not here: what the mappings hold (`shm`'s byte rings, `group`'s slots).

use std::fs::OpenOptions;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use memmap2::MmapMut;

/// A fresh file of `len` bytes under `dir`, named `{prefix}-{pid}-{random}`,
/// readable only by this user, mapped. Its pages are reserved now, so a
/// full tmpfs fails here rather than as SIGBUS in the middle of a transfer.
pub fn create(dir: &Path, prefix: &str, len: usize) -> io::Result<(MmapMut, PathBuf)> {
    let path = dir.join(format!(
        "{prefix}-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
    if rc != 0 {
        let _ = std::fs::remove_file(&path);
        return Err(io::Error::from_raw_os_error(rc));
    }
    let map = unsafe { MmapMut::map_mut(&file) };
    match map {
        Ok(map) => Ok((map, path)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(e)
        }
    }
}

/// Maps the file another process created at `path`, which must be `len`
/// bytes long.
pub fn open(path: &Path, len: usize) -> io::Result<MmapMut> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    if file.metadata()?.len() != len as u64 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} has the wrong size", path.display()),
        ));
    }
    unsafe { MmapMut::map_mut(&file) }
}

/// Sleeps while `word` holds `expected`, for at most `timeout`.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // Not FUTEX_PRIVATE: the word lives in memory shared between processes.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Wakes every process sleeping on `word`.
pub fn futex_wake(word: &AtomicU32) {
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        );
    }
}

/// Whether the peer's end of `stream` is closed (its process died or gave up).
pub fn peer_gone(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n == 0 {
        return true;
    }
    n < 0 && {
        let e = io::Error::last_os_error();
        !matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
        )
    }
}
