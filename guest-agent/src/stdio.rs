//! A process's stdio on the agent's side: output drained from the pipe (or
//! pty master) into a bounded queue until the host reads it, so nothing is
//! lost and a host that does not read only stalls the writer (as a full
//! pipe would); stdin written through. After the process exits, output is
//! drained for a grace period more: a background child that keeps the pipe
//! open cannot hold the host's read forever.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tokio::io::unix::AsyncFd;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

use crate::reaper::ExitWatch;

/// Chunks queued per stream (16 × 64 KiB: 1 MiB, plus the pipe's own).
const QUEUE_CHUNKS: usize = 16;
const CHUNK: usize = 64 << 10;

/// Sets O_NONBLOCK, for use with tokio's [`AsyncFd`].
pub fn set_nonblocking(fd: &OwnedFd) -> io::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
    Ok(())
}

/// Registers an fd with tokio (non-blocking from here on).
pub fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    set_nonblocking(&fd)?;
    // SAFETY: the OwnedFd owns an open fd, moves into the AsyncFd and is
    // closed only when the AsyncFd drops; its raw fd never changes.
    unsafe { AsyncFd::register(fd) }.map_err(|e| e.into_parts().1)
}

/// Reads once from a non-blocking fd, waiting until it is readable.
pub async fn read_fd(fd: &AsyncFd<OwnedFd>, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        let mut guard = fd.readable().await?;
        match guard.try_io(|inner| Ok(nix::unistd::read(inner.get_ref(), buf)?)) {
            Ok(result) => return result,
            Err(_would_block) => continue,
        }
    }
}

/// Writes all of `data` to a non-blocking fd.
pub async fn write_fd(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|inner| Ok(nix::unistd::write(inner.get_ref(), data)?)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        }
    }
    Ok(())
}

/// One output stream of a process.
pub struct Output {
    inner: Mutex<OutputInner>,
    eof_read: std::sync::atomic::AtomicBool,
}

struct OutputInner {
    rx: mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
}

impl Output {
    /// Starts draining `fd` (the agent's read end).
    pub fn start(fd: OwnedFd, exited: ExitWatch, grace: Duration) -> io::Result<Output> {
        let fd = async_fd(fd)?;
        let (tx, rx) = mpsc::channel(QUEUE_CHUNKS);
        tokio::spawn(drain(fd, tx, exited, grace));
        Ok(Output {
            inner: Mutex::new(OutputInner {
                rx,
                pending: Vec::new(),
            }),
            eof_read: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Whether a reader has been given the end of the stream.
    pub fn eof_read(&self) -> bool {
        self.eof_read.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Up to `max` bytes, waiting until there are some; `(empty, true)` at
    /// the end of the stream.
    pub async fn read(&self, max: usize) -> (Vec<u8>, bool) {
        let max = max.clamp(1, 4 << 20);
        let mut inner = self.inner.lock().await;
        if inner.pending.is_empty() {
            match inner.rx.recv().await {
                Some(chunk) => inner.pending = chunk,
                None => {
                    self.eof_read
                        .store(true, std::sync::atomic::Ordering::Release);
                    return (Vec::new(), true);
                }
            }
        }
        while inner.pending.len() < max {
            match inner.rx.try_recv() {
                Ok(chunk) => inner.pending.extend_from_slice(&chunk),
                Err(_) => break,
            }
        }
        let rest = if inner.pending.len() > max {
            inner.pending.split_off(max)
        } else {
            Vec::new()
        };
        (std::mem::replace(&mut inner.pending, rest), false)
    }
}

async fn drain(
    fd: AsyncFd<OwnedFd>,
    tx: mpsc::Sender<Vec<u8>>,
    mut exited: ExitWatch,
    grace: Duration,
) {
    let mut buf = vec![0u8; CHUNK];
    let mut deadline: Option<Instant> = None;
    loop {
        if deadline.is_none() && exited.borrow().is_some() {
            deadline = Some(Instant::now() + grace);
        }
        // Biased: data already in the pipe is always read before the grace
        // deadline is looked at, so nothing the process wrote is dropped.
        let result = tokio::select! {
            biased;
            r = read_fd(&fd, &mut buf) => r,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                tracing::debug!(fd = fd.as_raw_fd(), "output still open after the grace period; closed");
                break;
            }
            changed = exited.changed(), if deadline.is_none() => {
                if changed.is_err() {
                    deadline = Some(Instant::now() + grace);
                }
                continue;
            }
        };
        match result {
            Ok(0) => break,
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).await.is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // EIO: a pty whose last slave fd closed.
            Err(_) => break,
        }
    }
}

/// A process's stdin (a pipe's write end, or the pty master).
pub struct Input {
    fd: Mutex<Option<AsyncFd<OwnedFd>>>,
    tty: bool,
}

impl Input {
    /// Wraps the agent's end.
    pub fn new(fd: OwnedFd, tty: bool) -> io::Result<Input> {
        Ok(Input {
            fd: Mutex::new(Some(async_fd(fd)?)),
            tty,
        })
    }

    /// Writes all of `data`; an error once closed.
    pub async fn write(&self, data: &[u8]) -> io::Result<()> {
        let guard = self.fd.lock().await;
        match guard.as_ref() {
            Some(fd) => write_fd(fd, data).await,
            None => Err(io::Error::new(io::ErrorKind::BrokenPipe, "stdin is closed")),
        }
    }

    /// Drops the agent's end (the process ended: nothing will read it).
    pub async fn release(&self) {
        self.fd.lock().await.take();
    }

    /// Closes stdin: the pipe's write end, or for a terminal an end-of-file
    /// character (the master stays open for output).
    pub async fn close(&self) -> io::Result<()> {
        let mut guard = self.fd.lock().await;
        if self.tty {
            if let Some(fd) = guard.as_ref() {
                write_fd(fd, &[4]).await?;
            }
            return Ok(());
        }
        guard.take();
        Ok(())
    }
}
