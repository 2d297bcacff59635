//! The shim's log: `tracing` to containerd's `log` FIFO in the bundle
//! (opened non-blocking: a full pipe drops a line rather than stalling
//! the pod while containerd is away), and the TIDs of the async runtime's
//! threads, recorded as they start (before any logger exists).

use std::os::unix::fs::OpenOptionsExt;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;

static RUNTIME_TIDS: Mutex<Vec<(String, i32)>> = Mutex::new(Vec::new());

/// Records the calling runtime thread (tokio's `on_thread_start`).
pub fn record_thread() {
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .to_string();
    let tid = corral_vmm::threads::gettid();
    RUNTIME_TIDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((name, tid));
}

/// Logs the runtime threads recorded so far.
pub fn log_runtime_threads() {
    for (name, tid) in RUNTIME_TIDS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
    {
        tracing::debug!("{name} thread has TID {tid}");
    }
}

/// Sends `tracing` output to the `log` FIFO (or stderr when there is
/// none); the level is the configuration's `log_level` (`debug` with
/// containerd's `-debug`), or `RUST_LOG`.
pub fn init(debug: bool) {
    let level = if debug {
        "debug".to_string()
    } else {
        super::config::ShimConfig::load(None)
            .map(|c| c.log_level)
            .unwrap_or_else(|_| "info".into())
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let fifo = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_target(false);
    let _ = match fifo {
        Ok(f) => builder.with_writer(Mutex::new(f)).try_init(),
        Err(_) => builder.with_writer(std::io::stderr).try_init(),
    };
}
