//! The serial console's two ends on the host: where guest output goes
//! ([`ConsoleOutput`]) and where guest input comes from ([`ConsoleInput`]),
//! plus the I/O-thread subscriber that feeds host input to the UART without
//! ever overrunning its FIFO.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use corral_devices::bus::lock;
use corral_devices::legacy::SerialConsole;
use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::warn;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

/// Where the guest's console output goes.
#[derive(Debug, Clone, Default)]
pub enum ConsoleOutput {
    /// The VMM process's standard output.
    #[default]
    Stdout,
    /// A file, created or truncated.
    File(PathBuf),
    /// An in-memory buffer the caller can read (tests, embedding).
    Buffer(ConsoleBuffer),
    /// Nowhere.
    Discard,
}

/// Where the guest's console input comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConsoleInput {
    /// No input.
    #[default]
    None,
    /// The VMM process's standard input (a terminal or a pipe).
    Stdin,
}

/// Both ends of the console.
#[derive(Debug, Clone, Default)]
pub struct ConsoleConfig {
    /// Guest output.
    pub output: ConsoleOutput,
    /// Guest input.
    pub input: ConsoleInput,
}

impl ConsoleOutput {
    /// Opens the output as a writer for the UART.
    pub(crate) fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            ConsoleOutput::Stdout => Box::new(io::stdout()),
            ConsoleOutput::File(path) => Box::new(File::create(path)?),
            ConsoleOutput::Buffer(buffer) => Box::new(buffer.clone()),
            ConsoleOutput::Discard => Box::new(io::sink()),
        })
    }
}

/// A growable in-memory console that can be waited on.
#[derive(Debug, Clone, Default)]
pub struct ConsoleBuffer {
    inner: Arc<(Mutex<Vec<u8>>, Condvar)>,
}

impl ConsoleBuffer {
    /// An empty buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything written so far, lossily decoded as UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&lock(&self.inner.0)).into_owned()
    }

    /// Waits until the output contains `needle` or `timeout` passes;
    /// returns whether it appeared.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let needle = needle.as_bytes();
        let mut data = lock(&self.inner.0);
        loop {
            if data.windows(needle.len().max(1)).any(|w| w == needle) {
                return true;
            }
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return false;
            };
            data = match self.inner.1.wait_timeout(data, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

impl Write for ConsoleBuffer {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        lock(&self.inner.0).extend_from_slice(buf);
        self.inner.1.notify_all();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const STDIN_READABLE: u32 = 0;
const GUEST_WANTS_INPUT: u32 = 1;

/// Moves host input into the UART, pausing while its FIFO is full.
pub(crate) struct ConsoleInputHandler {
    input: File,
    serial: Arc<Mutex<SerialConsole>>,
    guest_wants_input: EventFd,
    paused: bool,
    closed: bool,
}

impl ConsoleInputHandler {
    /// Reads the process's stdin (through a duplicate, unbuffered fd).
    pub(crate) fn stdin(
        serial: Arc<Mutex<SerialConsole>>,
        guest_wants_input: EventFd,
    ) -> io::Result<Self> {
        let input = File::from(io::stdin().as_fd().try_clone_to_owned()?);
        Ok(Self {
            input,
            serial,
            guest_wants_input,
            paused: false,
            closed: false,
        })
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let room = lock(&self.serial).input_capacity();
        if room == 0 {
            // The guest has not drained the FIFO: stop watching the input
            // until it has (GUEST_WANTS_INPUT), so nothing is dropped.
            self.stop_watching(ops);
            self.paused = true;
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        match self.input.read(&mut buf[..want]) {
            Ok(0) => {
                self.stop_watching(ops);
                self.closed = true;
            }
            Ok(n) => {
                lock(&self.serial).enqueue_input(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!("console: reading input failed, input disabled: {e}");
                self.stop_watching(ops);
                self.closed = true;
            }
        }
    }

    fn stop_watching(&self, ops: &mut EventOps) {
        let _ = ops.remove(Events::with_data(&self.input, STDIN_READABLE, EventSet::IN));
    }
}

impl MutEventSubscriber for ConsoleInputHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.input, STDIN_READABLE, EventSet::IN)) {
            // E.g. stdin is a regular file, which epoll cannot watch.
            warn!("console: cannot watch stdin, guest input disabled: {e}");
            self.closed = true;
        }
        if let Err(e) = ops.add(Events::with_data(
            &self.guest_wants_input,
            GUEST_WANTS_INPUT,
            EventSet::IN,
        )) {
            warn!("console: cannot watch the UART's input-ready event: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            STDIN_READABLE if !self.closed => self.read_input(ops),
            GUEST_WANTS_INPUT => {
                let _ = self.guest_wants_input.read();
                if self.paused && !self.closed {
                    self.paused = false;
                    if let Err(e) =
                        ops.add(Events::with_data(&self.input, STDIN_READABLE, EventSet::IN))
                    {
                        warn!("console: cannot resume watching stdin: {e}");
                        self.closed = true;
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_wait_for_sees_later_writes() {
        let buf = ConsoleBuffer::new();
        let mut writer = buf.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            writer.write_all(b"hello ").unwrap();
            writer.write_all(b"world\n").unwrap();
        });
        assert!(buf.wait_for("o w", Duration::from_secs(5)));
        assert!(!buf.wait_for("absent", Duration::from_millis(10)));
        t.join().unwrap();
        assert_eq!(buf.text(), "hello world\n");
    }
}
