//! Console output that never blocks a vCPU.
//!
//! The UART writes guest output on the vCPU thread that executed the guest's
//! store. If that write could block (stdout is a pipe or terminal whose
//! reader has stopped), the vCPU would hang in the write, holding the UART,
//! and the VM could not even be shut down. So a stdout that can block is
//! reopened in non-blocking mode (`/proc/self/fd/1` gives a new open file
//! description: the shell's stdout keeps its own flags); what the reader is
//! not taking is kept in a bounded buffer that the `vmm-io` thread flushes
//! when the fd becomes writable; beyond the bound, output is dropped and
//! counted, with one warning. Files and in-memory buffers never block and
//! are written directly.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::sync::{Arc, Mutex};

use corral_devices::bus::lock;
use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::warn;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::ConsoleOutput;
use crate::io_thread::Subscriber;

/// Output the reader has not taken yet, at most this much.
const MAX_PENDING: usize = 256 * 1024;

/// Opens `output` for the UART; also returns the `vmm-io` subscriber that
/// flushes it, when it needs one.
pub(crate) fn open_output(
    output: &ConsoleOutput,
) -> io::Result<(Box<dyn Write + Send>, Option<Subscriber>)> {
    Ok(match output {
        ConsoleOutput::Stdout => match nonblocking_stdout()? {
            Some(file) => {
                let (writer, flusher) = nonblocking_pair(file)?;
                (Box::new(writer), Some(Box::new(flusher)))
            }
            // A regular file (a redirect): writes do not stall; append
            // through the shell's own description so its offset is kept.
            None => (
                Box::new(File::from(io::stdout().as_fd().try_clone_to_owned()?)),
                None,
            ),
        },
        ConsoleOutput::File(path) => (Box::new(File::create(path)?), None),
        ConsoleOutput::Buffer(buffer) => (Box::new(buffer.clone()), None),
        ConsoleOutput::Discard => (Box::new(io::sink()), None),
    })
}

/// Stdout reopened non-blocking, or None when it is a regular file.
fn nonblocking_stdout() -> io::Result<Option<File>> {
    let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    if stdout.metadata()?.file_type().is_file() {
        return Ok(None);
    }
    let reopened = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/proc/self/fd/1");
    match reopened {
        Ok(file) => Ok(Some(file)),
        // A socket cannot be reopened: keep the shared description, blocking.
        Err(e) if stdout.metadata()?.file_type().is_socket() => {
            warn!("console: stdout is a socket that cannot be made non-blocking ({e}); a stalled reader will stall the guest");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

struct Pending {
    file: File,
    queued: VecDeque<u8>,
    dropped: u64,
    /// The flusher has been asked to watch for writability.
    flushing: bool,
}

impl Pending {
    /// Writes as much of the queue as the fd takes now.
    fn drain(&mut self) {
        while !self.queued.is_empty() {
            let (front, _) = self.queued.as_slices();
            match self.file.write(front) {
                Ok(0) => break,
                Ok(n) => drop(self.queued.drain(..n)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.drop_bytes(self.queued.len(), &e);
                    self.queued.clear();
                }
            }
        }
    }

    fn drop_bytes(&mut self, n: usize, why: &dyn std::fmt::Display) {
        if self.dropped == 0 {
            warn!("console: dropping guest output ({why}); further drops are counted, not logged");
        }
        self.dropped += n as u64;
    }
}

/// The UART's end: queues and writes without blocking.
struct NonBlockingWriter {
    pending: Arc<Mutex<Pending>>,
    wake_flusher: EventFd,
}

/// The `vmm-io` end: flushes the queue when stdout is writable again.
struct Flusher {
    pending: Arc<Mutex<Pending>>,
    wake: EventFd,
    /// Stdout is registered for EPOLLOUT.
    watching: bool,
}

fn nonblocking_pair(file: File) -> io::Result<(NonBlockingWriter, Flusher)> {
    let wake = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
    let pending = Arc::new(Mutex::new(Pending {
        file,
        queued: VecDeque::new(),
        dropped: 0,
        flushing: false,
    }));
    Ok((
        NonBlockingWriter {
            pending: pending.clone(),
            wake_flusher: wake.try_clone()?,
        },
        Flusher {
            pending,
            wake,
            watching: false,
        },
    ))
}

impl Write for NonBlockingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut p = lock(&self.pending);
        let room = MAX_PENDING.saturating_sub(p.queued.len());
        let take = buf.len().min(room);
        p.queued.extend(&buf[..take]);
        if take < buf.len() {
            p.drop_bytes(buf.len() - take, &"the reader is not keeping up");
        }
        p.drain();
        if !p.queued.is_empty() && !p.flushing {
            p.flushing = true;
            // A full counter still wakes the flusher.
            let _ = self.wake_flusher.write(1);
        }
        // The guest's byte is consumed whatever became of it.
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const WAKE: u32 = 0;
const WRITABLE: u32 = 1;

impl MutEventSubscriber for Flusher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.wake, WAKE, EventSet::IN)) {
            warn!("console: cannot watch the output wake-up event: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut p = lock(&self.pending);
        if events.data() == WAKE {
            let _ = self.wake.read();
            if !self.watching {
                match ops.add(Events::with_data(&p.file, WRITABLE, EventSet::OUT)) {
                    Ok(()) => self.watching = true,
                    Err(e) => {
                        let n = p.queued.len();
                        p.queued.clear();
                        p.drop_bytes(n, &format!("cannot watch stdout: {e}"));
                    }
                }
            }
        }
        p.drain();
        if p.queued.is_empty() {
            if self.watching {
                let _ = ops.remove(Events::with_data(&p.file, WRITABLE, EventSet::OUT));
                self.watching = false;
            }
            p.flushing = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::FromRawFd;

    fn nonblocking_pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two fds into the array we own.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        assert_eq!(rc, 0);
        // SAFETY: both fds are fresh and owned by nobody else.
        unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
    }

    #[test]
    fn a_stalled_reader_never_blocks_the_writer() {
        let (mut reader, writer) = nonblocking_pipe();
        let (mut w, mut flusher) = nonblocking_pair(writer).unwrap();
        // Far more than the pipe (64 KiB) and the queue (256 KiB) hold.
        let chunk = vec![b'x'; 4096];
        for _ in 0..200 {
            assert_eq!(w.write(&chunk).unwrap(), chunk.len());
        }
        let (queued, dropped) = {
            let p = lock(&flusher.pending);
            (p.queued.len(), p.dropped)
        };
        assert_eq!(queued, MAX_PENDING);
        assert!(dropped > 0);
        // The reader catches up; the flusher's drain delivers the queue.
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        for _ in 0..100 {
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..n]);
            }
            lock(&flusher.pending).drain();
            if lock(&flusher.pending).queued.is_empty() {
                break;
            }
        }
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert!(lock(&flusher.pending).queued.is_empty());
        assert_eq!(
            got.len() as u64 + lock(&flusher.pending).dropped,
            200 * 4096
        );
        let _ = &mut flusher;
    }
}
