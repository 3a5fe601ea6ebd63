//! Ring links over TCP: the socket settings and the byte moves.
//!
//! Sockets get TCP_NODELAY (chunks are sent whole, there is nothing to
//! coalesce) and the ring's timeout as their read and write timeouts, so a
//! stalled peer surfaces as `TimedOut`. A receiving link reads in slices of
//! that timeout and fails once no byte came for the whole of it: a single
//! read with the whole timeout could return the bytes a frozen peer's
//! kernel still delivered only when it expires, and the read for the rest
//! would wait a second timeout. Buffer sizes are left to the
//! kernel's autotuning: it grows them to `net.ipv4.tcp_{r,w}mem`'s maximum
//! (32 MiB on Debian), while an explicit SO_RCVBUF/SO_SNDBUF is capped at
//! `net.core.{r,w}mem_max` (4 MiB here) and turns autotuning off, which
//! measured 15-20% slower on 4 ranks.

#[cfg(not(unix))]
use std::io::Read;
use std::io::{self, IoSlice, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use super::link::{Inbound, Outbound};

/// Prepares a connected socket for ring traffic.
pub fn configure(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(())
}

pub struct TcpOut {
    pub stream: Arc<TcpStream>,
}

impl Outbound for TcpOut {
    fn send(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let mut slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
        let mut rest = &mut slices[..];
        let mut stream = &*self.stream;
        while !rest.is_empty() {
            match stream.write_vectored(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => IoSlice::advance_slices(&mut rest, n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn transport(&self) -> &'static str {
        "tcp"
    }
}

pub struct TcpIn {
    pub stream: Arc<TcpStream>,
    /// Where incoming values wait to be added.
    scratch: Vec<f32>,
    /// How long the peer may send nothing.
    timeout: Duration,
}

/// Reads wait at most this share of the timeout before checking how long
/// the peer has been silent.
const READ_SLICES: u32 = 8;

impl TcpIn {
    pub fn new(stream: Arc<TcpStream>, timeout: Duration) -> io::Result<TcpIn> {
        let slice = (timeout / READ_SLICES).max(Duration::from_millis(10));
        stream.set_read_timeout(Some(slice))?;
        Ok(TcpIn {
            stream,
            scratch: Vec::new(),
            timeout,
        })
    }
}

/// Fills `out` from `stream`, asking the kernel for all of it at once
/// (MSG_WAITALL: one call per chunk instead of one per arriving segment).
/// Each call waits one slice (the socket's read timeout); `TimedOut` once
/// slices without a byte add up to `timeout`.
#[cfg(unix)]
fn read_full(stream: &TcpStream, out: &mut [u8], timeout: Duration) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let slice = stream.read_timeout()?.unwrap_or(timeout);
    let mut silent = Duration::ZERO;
    let mut at = 0;
    while at < out.len() {
        let n = unsafe {
            libc::recv(
                stream.as_raw_fd(),
                out[at..].as_mut_ptr().cast(),
                out.len() - at,
                libc::MSG_WAITALL,
            )
        };
        match n {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n if n > 0 => {
                at += n as usize;
                silent = Duration::ZERO;
            }
            _ => {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                        silent += slice;
                        if silent >= timeout {
                            return Err(io::ErrorKind::TimedOut.into());
                        }
                    }
                    _ => return Err(e),
                }
            }
        }
    }
    Ok(())
}

#[cfg(not(unix))]
fn read_full(mut stream: &TcpStream, out: &mut [u8], _timeout: Duration) -> io::Result<()> {
    stream.read_exact(out)
}

impl Inbound for TcpIn {
    fn recv(&mut self, out: &mut [u8]) -> io::Result<()> {
        read_full(&self.stream, out, self.timeout)
    }

    fn recv_add(&mut self, dst: &mut [f32]) -> io::Result<()> {
        self.scratch.resize(dst.len(), 0.0);
        read_full(
            &self.stream,
            bytemuck::cast_slice_mut(&mut self.scratch),
            self.timeout,
        )?;
        for (d, s) in dst.iter_mut().zip(&self.scratch) {
            *d += s;
        }
        Ok(())
    }

    fn transport(&self) -> &'static str {
        "tcp"
    }
}
