//! A process's stdio between containerd and the guest agent.
//!
//! containerd names each stream by a FIFO path (`ctr`, CRI) or a URI
//! (`file:///path`; `binary://` loggers are refused with a clear error).
//! Output FIFOs are opened read-write: the open never blocks, and the shim
//! keeps a reader itself, so a write never fails with EPIPE while
//! containerd restarts — it waits in the pipe until containerd reopens it.
//! The shim closes its ends when the agent reports the stream's end,
//! which is what tells containerd (`ctr`'s io.Wait) the output is complete.
//! Stdin is read until containerd's `CloseIO`, then what is left in the
//! pipe is forwarded and the process's stdin is closed.

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
    #[error("stdio {uri}: only FIFOs and file:// are supported (binary:// loggers are not yet)")]
    Scheme {
        /// What containerd gave.
        uri: String,
    },
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
