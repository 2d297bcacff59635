//! `corral run -t`: the container's process gets a terminal in the guest.
//! This process's own terminal (when stdin is one) is put in raw mode for
//! the run, so keys reach the container as typed, and restored afterwards;
//! the container's window size follows this terminal's: SIGWINCH is blocked
//! in every thread (before any is spawned, like the termination signals)
//! and waited for on a thread of its own, `corral-winch`.

use std::io;
use std::os::fd::AsRawFd;

/// SIGWINCH, blocked; to be waited on.
pub struct WindowChanges(libc::sigset_t);

/// Blocks SIGWINCH in the calling thread and the threads it spawns later
/// (its default action is to be ignored, so blocking it changes nothing
/// when no one waits for it).
pub fn block_window_changes() -> io::Result<WindowChanges> {
    crate::signals::block(&[libc::SIGWINCH]).map(WindowChanges)
}

/// Sends one message on `tx` per window change, from the `corral-winch`
/// thread, until the receiver is gone (the thread then ends at the next
/// change, or with the process).
pub fn spawn_winch_thread(
    changes: WindowChanges,
    tx: tokio::sync::mpsc::Sender<()>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("corral-winch".into())
        .spawn(move || {
            crate::filters::install_signal_thread();
            tracing::debug!(
                "corral-winch thread has TID {}",
                corral_vmm::threads::gettid()
            );
            loop {
                let mut sig: libc::c_int = 0;
                // SAFETY: the set was initialised by block_window_changes
                // and `sig` is a valid out-pointer.
                let rc = unsafe { libc::sigwait(&changes.0, &mut sig) };
                if rc == 0 && tx.blocking_send(()).is_err() {
                    break;
                }
            }
        })
        .map(|_| ())
}

/// The size (rows, columns) of the terminal on stdin or stdout, if any.
pub fn window_size() -> Option<(u16, u16)> {
    [io::stdin().as_raw_fd(), io::stdout().as_raw_fd()]
        .into_iter()
        .find_map(size_of)
}

fn size_of(fd: i32) -> Option<(u16, u16)> {
    // SAFETY: TIOCGWINSZ writes a winsize into the zeroed struct we own; a
    // descriptor that is not a terminal makes it fail, which we check.
    let ws = unsafe {
        let mut ws: libc::winsize = std::mem::zeroed();
        if libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) != 0 {
            return None;
        }
        ws
    };
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// Stdin's terminal in raw mode; restored when dropped.
pub struct RawMode {
    saved: libc::termios,
}

impl RawMode {
    /// Puts stdin's terminal in raw mode; None when stdin is no terminal.
    pub fn enter() -> io::Result<Option<RawMode>> {
        let fd = io::stdin().as_raw_fd();
        // SAFETY: isatty only inspects the fd.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        // SAFETY: tcgetattr fills the zeroed termios we own; cfmakeraw and
        // tcsetattr read and write only that struct and the fd's settings.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut saved) != 0 {
                return Err(io::Error::last_os_error());
            }
            let mut raw = saved;
            libc::cfmakeraw(&mut raw);
            if libc::tcsetattr(fd, libc::TCSANOW, &raw) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Some(RawMode { saved }))
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        // SAFETY: restores the settings tcgetattr returned for this fd.
        unsafe {
            libc::tcsetattr(io::stdin().as_raw_fd(), libc::TCSANOW, &self.saved);
        }
    }
}
