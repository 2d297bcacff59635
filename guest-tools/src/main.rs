//! `corral-vsock`: a stream over AF_VSOCK between standard I/O and a peer,
//! for Corral's guest initramfs (busybox has no vsock tool; nor has Debian a
//! static one). Runs in the guest; `rootfs/build.sh` links it statically.
//!
//! ```text
//! corral-vsock connect CID PORT   connect to CID:PORT (the host is CID 2)
//! corral-vsock listen PORT        accept one connection on PORT
//! ```
//!
//! Then standard input goes to the peer (and the write side is shut down at
//! its end) while whatever the peer sends goes to standard output, until the
//! peer closes. Exit status 0 on a clean end; 1 with a one-line message
//! otherwise.

mod vsock;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::ExitCode;

const USAGE: &str = "usage: corral-vsock connect CID PORT | corral-vsock listen PORT";

fn parse_u32(what: &str, s: &str) -> Result<u32, String> {
    s.parse()
        .map_err(|_| format!("{what} {s:?} is not a number from 0 to 4294967295"))
}

fn open(args: &[String]) -> Result<OwnedFd, String> {
    match args {
        [mode, cid, port] if mode == "connect" => {
            let (cid, port) = (parse_u32("CID", cid)?, parse_u32("port", port)?);
            vsock::connect(cid, port).map_err(|e| format!("connect to vsock {cid}:{port}: {e}"))
        }
        [mode, port] if mode == "listen" => {
            let port = parse_u32("port", port)?;
            vsock::accept_one(port).map_err(|e| format!("listen on vsock port {port}: {e}"))
        }
        _ => Err(USAGE.to_string()),
    }
}

/// Copies standard input to `sock` in a thread, `sock` to standard output
/// here; returns once the peer has closed and the input is sent.
fn relay(sock: OwnedFd) -> Result<(), String> {
    let mut tx = std::fs::File::from(
        sock.try_clone()
            .map_err(|e| format!("duplicate the socket: {e}"))?,
    );
    let sender = std::thread::Builder::new()
        .name("vsock-tx".into())
        .spawn(move || -> Result<(), String> {
            std::io::copy(&mut std::io::stdin().lock(), &mut tx)
                .map_err(|e| format!("send: {e}"))?;
            vsock::shutdown_write(&tx).map_err(|e| format!("shut down sending: {e}"))
        })
        .map_err(|e| format!("start the sending thread: {e}"))?;
    let mut rx = std::fs::File::from(sock);
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = rx.read(&mut buf).map_err(|e| format!("receive: {e}"))?;
        if n == 0 {
            break;
        }
        out.write_all(&buf[..n])
            .and_then(|()| out.flush())
            .map_err(|e| format!("write standard output: {e}"))?;
    }
    sender
        .join()
        .map_err(|_| "the sending thread panicked".to_string())?
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match open(&args).and_then(relay) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corral-vsock: {e}");
            ExitCode::FAILURE
        }
    }
}
