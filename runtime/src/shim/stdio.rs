//! A process's stdio between containerd and the guest agent.
//!
//! containerd names each stream by a FIFO path (`ctr`, CRI) or a URI
//! (`file:///path`, or `binary:///logger?k=v` for a logging program that
//! gets both output streams).
//! Output FIFOs are opened read-write: the open never blocks, and the shim
//! keeps a reader itself, so a write never fails with EPIPE while
//! containerd restarts — it waits in the pipe until containerd reopens it.
//! The shim closes its ends when the agent reports the stream's end,
//! which is what tells containerd (`ctr`'s io.Wait) the output is complete.
//! Stdin is read until containerd's `CloseIO`, then what is left in the
//! pipe is forwarded and the process's stdin is closed.

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::Notify;

use crate::agent::AgentClient;

/// Largest chunk asked of the agent per read.
const READ_CHUNK: u32 = 1 << 20;

/// Why a stream could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ShimStdioError {
    /// The FIFO or file cannot be opened.
    #[error("cannot open {uri}")]
    Open {
        /// What containerd gave.
        uri: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A scheme the shim does not serve.
    #[error("stdio {uri}: only FIFOs, file:// and binary:// are supported")]
    Scheme {
        /// What containerd gave.
        uri: String,
    },
    /// A `binary://` logger could not be started or did not get ready.
    #[error("logger {uri}: {message}")]
    Logger {
        /// What containerd gave.
        uri: String,
        /// What went wrong.
        message: String,
    },
}

/// How long a `binary://` logger may take to close its ready pipe.
const LOGGER_READY: std::time::Duration = std::time::Duration::from_secs(10);

/// Opens a process's stdout and stderr: FIFOs or `file://` each, or one
/// `binary://` logger for both, started as containerd's runc shim starts
/// one: `PATH k1 v1 k2 v2…` from the URI's query, `CONTAINER_ID` and
/// `CONTAINER_NAMESPACE` set, stdout on fd 3 and stderr on fd 4 (pipes),
/// and fd 5 to close once it is ready (waited for up to 10 s).
pub async fn open_outputs(
    stdout: &str,
    stderr: &str,
    id: &str,
    namespace: &str,
) -> Result<(Option<Output>, Option<Output>), ShimStdioError> {
    if stdout.starts_with("binary://") {
        let (out, err) = spawn_logger(stdout, id, namespace).await?;
        return Ok((Some(out), Some(err)));
    }
    Ok((open_output(stdout).await?, open_output(stderr).await?))
}

async fn spawn_logger(
    uri: &str,
    id: &str,
    namespace: &str,
) -> Result<(Output, Output), ShimStdioError> {
    let fail = |message: String| ShimStdioError::Logger {
        uri: uri.to_string(),
        message,
    };
    let rest = uri.trim_start_matches("binary://");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(k.to_string());
        if !v.is_empty() {
            args.push(v.to_string());
        }
    }
    let io = |e: std::io::Error| fail(e.to_string());
    let (out_tx, out_rx) = pipe::pipe().map_err(io)?;
    let (err_tx, err_rx) = pipe::pipe().map_err(io)?;
    let (ready_tx, mut ready_rx) = pipe::pipe().map_err(io)?;
    // The child's ends, moved above fd 5 so the dup2s below cannot clobber
    // one another.
    let child_fds = [
        high_fd(out_rx.into_blocking_fd().map_err(io)?).map_err(io)?,
        high_fd(err_rx.into_blocking_fd().map_err(io)?).map_err(io)?,
        high_fd(ready_tx.into_blocking_fd().map_err(io)?).map_err(io)?,
    ];
    let raw: Vec<i32> = child_fds.iter().map(|f| f.as_raw_fd()).collect();
    let mut cmd = tokio::process::Command::new(path);
    cmd.args(&args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // SAFETY: only async-signal-safe dup2 calls between fork and exec, on
    // fds that stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            for (i, fd) in raw.iter().enumerate() {
                if libc::dup2(*fd, 3 + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start {path}: {e}")))?;
    drop(child_fds);
    // The shim reaps nothing implicitly: the logger is waited for here.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    let mut sink = [0u8; 64];
    let ready = tokio::time::timeout(LOGGER_READY, async {
        while ready_rx
            .read(&mut sink)
            .await
            .map(|n| n > 0)
            .unwrap_or(false)
        {}
    })
    .await;
    if ready.is_err() {
        return Err(fail("did not close fd 5 (ready) within 10 s".into()));
    }
    Ok((Box::new(out_tx), Box::new(err_tx)))
}

/// A duplicate of `fd` numbered 10 or above (close-on-exec).
fn high_fd(fd: std::os::fd::OwnedFd) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_DUPFD_CLOEXEC on an fd we own; the new fd is owned below.
    let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `new` was just returned by fcntl and is owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(new) })
}

/// Where one output stream goes.
pub type Output = Box<dyn AsyncWrite + Unpin + Send>;

/// Opens an output stream; `None` when containerd gave none.
pub async fn open_output(uri: &str) -> Result<Option<Output>, ShimStdioError> {
    let open = |source| ShimStdioError::Open {
        uri: uri.to_string(),
        source,
    };
    if uri.is_empty() {
        return Ok(None);
    }
    if let Some(path) = uri.strip_prefix("file://") {
        if let Some(parent) = Path::new(path).parent() {
            tokio::fs::create_dir_all(parent).await.map_err(open)?;
        }
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .await
            .map_err(open)?;
        return Ok(Some(Box::new(file)));
    }
    let path = fifo_path(uri)?;
    let sender = pipe::OpenOptions::new()
        .read_write(true)
        .open_sender(path)
        .map_err(open)?;
    Ok(Some(Box::new(sender)))
}

/// Opens the stdin FIFO; `None` when containerd gave none.
pub fn open_input(uri: &str) -> Result<Option<pipe::Receiver>, ShimStdioError> {
    if uri.is_empty() {
        return Ok(None);
    }
    let path = fifo_path(uri)?;
    pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .map(Some)
        .map_err(|source| ShimStdioError::Open {
            uri: uri.to_string(),
            source,
        })
}

fn fifo_path(uri: &str) -> Result<&str, ShimStdioError> {
    if let Some(path) = uri.strip_prefix("fifo://") {
        return Ok(path);
    }
    if uri.contains("://") {
        return Err(ShimStdioError::Scheme {
            uri: uri.to_string(),
        });
    }
    Ok(uri)
}

/// Copies one output stream of a process from the agent to `to` until the
/// agent reports its end; then `to` is closed.
pub async fn pump_output(
    agent: AgentClient,
    id: String,
    exec_id: String,
    stderr: bool,
    mut to: Option<Output>,
) {
    loop {
        match agent.read_output(&id, &exec_id, stderr, READ_CHUNK).await {
            Ok(Some(chunk)) => {
                if let Some(w) = to.as_mut() {
                    if let Err(e) = w.write_all(&chunk).await {
                        tracing::warn!(id, exec_id, "stdio: cannot write output: {e}");
                        to = None;
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                tracing::debug!(id, exec_id, "stdio: output ended: {e}");
                break;
            }
        }
    }
    if let Some(mut w) = to {
        let _ = w.shutdown().await;
    }
}

/// Forwards stdin from `from` until it ends or `close` is notified (then
/// what the pipe still holds), and closes the process's stdin.
pub async fn pump_input(
    agent: AgentClient,
    id: String,
    exec_id: String,
    from: Option<pipe::Receiver>,
    close: Arc<Notify>,
) {
    if let Some(mut rx) = from {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            tokio::select! {
                r = rx.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if agent.write_stdin(&id, &exec_id, &buf[..n]).await.is_err() {
                            break;
                        }
                    }
                },
                () = close.notified() => {
                    while let Ok(n) = rx.try_read(&mut buf) {
                        if n == 0 || agent.write_stdin(&id, &exec_id, &buf[..n]).await.is_err() {
                            break;
                        }
                    }
                    break;
                }
            }
        }
    }
    if let Err(e) = agent.close_stdin(&id, &exec_id).await {
        tracing::debug!(id, exec_id, "stdio: cannot close stdin: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn uris_are_told_apart_and_bad_ones_named() {
        assert_eq!(fifo_path("/run/x/stdout").unwrap(), "/run/x/stdout");
        assert_eq!(fifo_path("fifo:///a").unwrap(), "/a");
        let err = fifo_path("binary:///usr/bin/logger?a=b").unwrap_err();
        assert!(
            err.to_string().contains("binary:///usr/bin/logger"),
            "{err}"
        );
        assert!(open_output("").await.unwrap().is_none());
        let dir = std::env::temp_dir().join(format!("corral-stdio-{}", std::process::id()));
        let file = dir.join("out.log");
        let mut w = open_output(&format!("file://{}", file.display()))
            .await
            .unwrap()
            .unwrap();
        w.write_all(b"hi").await.unwrap();
        w.shutdown().await.unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"hi");
        let _ = std::fs::remove_dir_all(&dir);
        let err = open_input("/nonexistent/stdin").unwrap_err();
        assert!(err.to_string().contains("/nonexistent/stdin"), "{err}");
    }
}
