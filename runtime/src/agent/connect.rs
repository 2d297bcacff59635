//! Reaching the agent: Corral's vsock device exposes the guest's ports on
//! one Unix socket; a host connection says `CONNECT <port>\n` and gets
//! `OK <host port>\n` once the guest accepted, or is closed if nothing in
//! the guest listens there (yet).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::time::Instant;

/// Why the agent could not be reached.
#[derive(Debug, thiserror::Error)]
pub enum AgentConnectError {
    /// Nothing accepted within the deadline.
    #[error("the guest agent did not answer on vsock port {port} through {} within {waited:?} (last: {last})", socket.display())]
    Timeout {
        /// The hybrid vsock socket.
        socket: PathBuf,
        /// The guest port.
        port: u32,
        /// How long it tried.
        waited: Duration,
        /// The last failure.
        last: String,
    },
}

/// Connects to guest port `port` through the hybrid vsock socket at
/// `socket`, retrying (the VM may still boot, the agent may not listen yet)
/// until `deadline` has passed.
pub async fn connect_hybrid_vsock(
    socket: &Path,
    port: u32,
    deadline: Duration,
) -> Result<UnixStream, AgentConnectError> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let left = deadline.saturating_sub(started.elapsed());
        let attempt =
            tokio::time::timeout(left.max(Duration::from_millis(1)), handshake(socket, port)).await;
        let last = match attempt {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "handshake timed out".to_string(),
        };
        if started.elapsed() + pause >= deadline {
            return Err(AgentConnectError::Timeout {
                socket: socket.to_path_buf(),
                port,
                waited: started.elapsed(),
                last,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

async fn handshake(socket: &Path, port: u32) -> io::Result<UnixStream> {
    let mut stream = UnixStream::connect(socket).await?;
    stream
        .write_all(format!("CONNECT {port}\n").as_bytes())
        .await?;
    // Byte by byte: nothing after the line may be consumed here.
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if stream.read(&mut b).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionRefused,
                format!("closed before OK (nothing listens on guest port {port} yet)"),
            ));
        }
        if b[0] == b'\n' {
            break;
        }
        line.push(b[0]);
        if line.len() > 64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "handshake line too long",
            ));
        }
    }
    let line = String::from_utf8_lossy(&line);
    if line.starts_with("OK ") {
        Ok(stream)
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected handshake answer {line:?}"),
        ))
    }
}
