//! The serial console's two ends on the host: where guest output goes
//! ([`ConsoleOutput`], opened by `output`) and where guest input comes from
//! ([`ConsoleInput`], fed by `input`), and an in-memory console for tests
//! and embedders ([`ConsoleBuffer`]).

mod input;
mod output;

pub(crate) use input::ConsoleInputHandler;
pub(crate) use output::open_output;

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use corral_devices::bus::lock;

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
