//! The muxer's side facing host programs: accepting connections on the
//! device's socket, reading their `CONNECT <port>` line, the deadlines of
//! connections that have not finished opening, and non-blocking connects
//! to `<uds_path>_<port>` for the guest's connections.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Instant;

use tracing::{debug, warn};

use super::super::connection::{ConnState, Connection};
use super::super::control::ConnKey;
use super::{
    Interest, Muxer, PendingConnect, CONNECT_LINE_TIMEOUT, FIRST_LOCAL_PORT,
    GUEST_RESPONSE_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECT_LINE, OP_REQUEST, WANT_IN,
};

impl Muxer {
    /// Stops watching a pending host connection and closes it once the
    /// worker has applied that.
    pub(super) fn close_pending(&mut self, token: u32, p: PendingConnect) {
        self.interest.push(Interest {
            fd: p.stream.as_raw_fd(),
            token,
            old: WANT_IN,
            new: 0,
        });
        self.closed.push(p.stream);
    }

    /// The listening socket is readable: accept host connections.
    pub fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if self.conns.len() + self.pending.len() >= MAX_CONNECTIONS
                        || stream.set_nonblocking(true).is_err()
                    {
                        continue; // dropping it closes it
                    }
                    let token = self.token();
                    self.interest.push(Interest {
                        fd: stream.as_raw_fd(),
                        token,
                        old: 0,
                        new: WANT_IN,
                    });
                    self.pending.insert(
                        token,
                        PendingConnect {
                            stream,
                            line: Vec::new(),
                            deadline: Instant::now() + CONNECT_LINE_TIMEOUT,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    warn!("vsock: accept failed: {e}");
                    break;
                }
            }
        }
    }

    pub(super) fn read_connect_line(&mut self, token: u32) {
        let Some(p) = self.pending.get_mut(&token) else {
            return;
        };
        let mut buf = [0u8; MAX_CONNECT_LINE];
        let n = match p
            .stream
            .read(&mut buf[..MAX_CONNECT_LINE - p.line.len().min(MAX_CONNECT_LINE)])
        {
            Ok(0) => usize::MAX, // closed before finishing the line
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(_) => usize::MAX,
        };
        let line_done = n != usize::MAX && {
            p.line.extend_from_slice(&buf[..n]);
            p.line.contains(&b'\n')
        };
        if !line_done && n != usize::MAX && p.line.len() < MAX_CONNECT_LINE {
            return;
        }
        let Some(p) = self.pending.remove(&token) else {
            return;
        };
        self.interest.push(Interest {
            fd: p.stream.as_raw_fd(),
            token,
            old: WANT_IN,
            new: 0,
        });
        let Some(nl) = p.line.iter().position(|b| *b == b'\n') else {
            debug!("vsock: host connection sent no CONNECT line");
            self.closed.push(p.stream);
            return;
        };
        let port = std::str::from_utf8(&p.line[..nl])
            .ok()
            .and_then(|l| l.strip_prefix("CONNECT "))
            .and_then(|port| port.trim().parse::<u32>().ok());
        let Some(guest_port) = port else {
            debug!(
                "vsock: bad CONNECT line {:?}",
                String::from_utf8_lossy(&p.line[..nl])
            );
            self.closed.push(p.stream);
            return;
        };
        if self.conns.len() >= MAX_CONNECTIONS {
            self.closed.push(p.stream);
            return;
        }
        let local_port = self.local_port(guest_port);
        let key = (local_port, guest_port);
        let mut c = Connection::new(p.stream, token, ConnState::AwaitingGuest);
        c.prefix = p.line[nl + 1..].to_vec();
        c.deadline = Some(Instant::now() + GUEST_RESPONSE_TIMEOUT);
        self.by_token.insert(token, key);
        self.conns.insert(key, c);
        self.push_control(key, OP_REQUEST, 0);
    }

    fn local_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let port = self.next_local_port;
            self.next_local_port = match self.next_local_port.checked_add(1) {
                Some(p) => p,
                None => FIRST_LOCAL_PORT,
            };
            if !self.conns.contains_key(&(port, guest_port)) {
                return port;
            }
        }
    }

    /// The next moment [`Muxer::expire`] has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        let pending = self.pending.values().map(|p| p.deadline);
        let awaiting = self.conns.values().filter_map(|c| c.deadline);
        pending.chain(awaiting).min()
    }

    /// Closes host connections whose `CONNECT` line or guest answer is
    /// overdue at `now`; a connection the guest never answered gets a reset,
    /// so a late answer finds nothing.
    pub fn expire(&mut self, now: Instant) {
        let late: Vec<u32> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(t, _)| *t)
            .collect();
        for token in late {
            if let Some(p) = self.pending.remove(&token) {
                debug!("vsock: host connection sent no CONNECT line in time");
                self.stats.timeouts += 1;
                self.close_pending(token, p);
            }
        }
        let unanswered: Vec<ConnKey> = self
            .conns
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .map(|(k, _)| *k)
            .collect();
        for key in unanswered {
            debug!("vsock: guest port {} did not answer in time", key.1);
            self.stats.timeouts += 1;
            self.reset(key);
        }
    }
}

/// Connects to a Unix socket without ever blocking (a full backlog is a
/// refusal).
pub(super) fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; zeroed is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket path too long",
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: creating a socket has no memory-safety preconditions.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let stream = unsafe { UnixStream::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `addr` is an initialised sockaddr_un of `len` bytes.
    let rc = unsafe {
        libc::connect(
            stream.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stream)
}
