//! The host side of virtio-vsock, compatible with Firecracker's "hybrid"
//! vsock: guest streams map to Unix sockets.
//!
//! - Host → guest: a host program connects to the device's socket
//!   (`uds_path`) and writes `CONNECT <port>\n`; we open a stream to that
//!   guest port and, once the guest accepts, answer `OK <host port>\n`.
//! - Guest → host: a guest connection to CID 2, port P, is connected to the
//!   Unix socket `<uds_path>_P`; if nothing listens there the guest gets a
//!   reset.
//!
//! The muxer knows nothing of epoll: it records which sockets it wants
//! watched in [`Muxer::take_interest`], and the worker applies it. That
//! keeps it testable with plain sockets.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::debug;
use virtio_vsock::packet::{VsockPacket, PKT_HEADER_SIZE};
use vm_memory::{ReadVolatile, VolatileMemoryError};

use super::connection::{ConnState, Connection, TX_BUF_SIZE};
use super::control::{ConnKey, ControlQueue};
use super::HOST_CID;
use crate::ratelimit::warn_limited;

mod host;
use host::connect_nonblocking;

// The packet header's values, from the kernel's virtio_vsock.h, which
// virtio-bindings does not carry (virtio-vsock parses the header, but has
// no names for its values).

/// Packet type of stream sockets.
pub const TYPE_STREAM: u16 = 1;
/// Operations.
pub const OP_REQUEST: u16 = 1;
/// Connection accepted.
pub const OP_RESPONSE: u16 = 2;
/// Connection refused or torn down.
pub const OP_RST: u16 = 3;
/// One side will send and/or receive no more.
pub const OP_SHUTDOWN: u16 = 4;
/// Data.
pub const OP_RW: u16 = 5;
/// Credit information.
pub const OP_CREDIT_UPDATE: u16 = 6;
/// Ask for credit information.
pub const OP_CREDIT_REQUEST: u16 = 7;
/// SHUTDOWN flag: the sender will receive no more.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more.
pub const SHUTDOWN_SEND: u32 = 2;

/// Most simultaneous connections (each holds a host fd).
pub const MAX_CONNECTIONS: usize = 1024;
/// First host port handed to host-initiated connections.
pub(crate) const FIRST_LOCAL_PORT: u32 = 1 << 30;
/// Longest `CONNECT <port>\n` line accepted.
const MAX_CONNECT_LINE: usize = 32;
/// epoll tokens below this belong to the worker.
pub const FIRST_DYNAMIC_TOKEN: u32 = 16;
/// How long a host connection may take to send its `CONNECT` line.
pub const CONNECT_LINE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the guest may take to accept or refuse a host connection.
/// Firecracker allows 2 s; ours is longer because the nested test lane runs
/// guests under instruction emulation, where a busy guest kernel can take
/// seconds to answer. A guest that never answers costs one fd for this long.
pub const GUEST_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Interest bits.
pub const WANT_IN: u8 = 1;
/// Interest bits.
pub const WANT_OUT: u8 = 2;

/// A change of what the worker should watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    /// The fd.
    pub fd: RawFd,
    /// Its token.
    pub token: u32,
    /// Interest before (0 = not registered).
    pub old: u8,
    /// Interest now (0 = unregister).
    pub new: u8,
}

struct PendingConnect {
    stream: UnixStream,
    line: Vec<u8>,
    /// When it is closed if the line has not arrived.
    deadline: Instant,
}

/// What [`Muxer::fill_rx`] did with an RX buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// A packet of this many bytes (header and data) was written.
    Packet(u32),
    /// Nothing to send: give the buffer back.
    Nothing,
    /// Only data is waiting and the buffer has no room for any: the buffer
    /// is useless (a well-behaved driver never posts one) and is returned
    /// to the guest empty rather than tried again for ever.
    NoRoom,
}

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VsockStats {
    /// Connections established.
    pub connections: u64,
    /// Resets sent to the guest.
    pub resets_sent: u64,
    /// Malformed or unexpected packets from the guest.
    pub bad_packets: u64,
    /// RX buffers returned empty: no room for data.
    pub rx_no_room: u64,
    /// Control packets not queued because an equal one was already queued.
    pub control_coalesced: u64,
    /// Host connections closed because the `CONNECT` line or the guest's
    /// answer did not come in time.
    pub timeouts: u64,
}

/// The connection multiplexer.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    conns: HashMap<ConnKey, Connection>,
    by_token: HashMap<u32, ConnKey>,
    pending: HashMap<u32, PendingConnect>,
    control: ControlQueue,
    /// Connections that may have data for the guest, in turn order.
    ready: VecDeque<ConnKey>,
    next_token: u32,
    next_local_port: u32,
    interest: Vec<Interest>,
    /// Sockets of removed connections, kept open until the worker has
    /// unregistered them (a closed fd cannot be removed from epoll, and its
    /// number may be reused).
    closed: Vec<UnixStream>,
    stats: VsockStats,
}

impl Muxer {
    /// Listens on `uds_path` (replacing a stale socket file there).
    pub fn new(guest_cid: u64, uds_path: &Path) -> io::Result<Self> {
        if let Ok(meta) = std::fs::symlink_metadata(uds_path) {
            use std::os::unix::fs::FileTypeExt;
            if meta.file_type().is_socket() {
                std::fs::remove_file(uds_path)?;
            }
        }
        let listener = UnixListener::bind(uds_path)?;
        listener.set_nonblocking(true)?;
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            conns: HashMap::new(),
            by_token: HashMap::new(),
            pending: HashMap::new(),
            control: ControlQueue::default(),
            ready: VecDeque::new(),
            next_token: FIRST_DYNAMIC_TOKEN,
            next_local_port: FIRST_LOCAL_PORT,
            interest: Vec::new(),
            closed: Vec::new(),
            stats: VsockStats::default(),
        })
    }

    /// The listening socket's fd (watched by the worker for IN).
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Counters.
    pub fn stats(&self) -> VsockStats {
        VsockStats {
            control_coalesced: self.control.coalesced(),
            ..self.stats
        }
    }

    /// Control packets waiting for RX buffers.
    pub fn control_backlog(&self) -> usize {
        self.control.len()
    }

    /// Whether the guest's TX packets should wait: too many control packets
    /// are owed to a guest that posts no RX buffers.
    pub fn tx_blocked(&self) -> bool {
        self.control.is_full()
    }

    /// Open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Watch changes the worker must apply, and the sockets it may close
    /// once it has.
    pub fn take_interest(&mut self) -> (Vec<Interest>, Vec<UnixStream>) {
        (
            std::mem::take(&mut self.interest),
            std::mem::take(&mut self.closed),
        )
    }

    fn token(&mut self) -> u32 {
        loop {
            let t = self.next_token;
            self.next_token = self
                .next_token
                .checked_add(1)
                .unwrap_or(FIRST_DYNAMIC_TOKEN);
            if !self.by_token.contains_key(&t) && !self.pending.contains_key(&t) {
                return t;
            }
        }
    }

    /// Re-derives what to watch on a connection's socket.
    fn refresh(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let mut want = 0;
        if c.state == ConnState::Established
            && !c.readable
            && !c.host_done
            && !c.guest_done_receiving
        {
            want |= WANT_IN;
        }
        if !c.tx_buf.is_empty() {
            want |= WANT_OUT;
        }
        if want != c.registered {
            self.interest.push(Interest {
                fd: c.stream.as_raw_fd(),
                token: c.token,
                old: c.registered,
                new: want,
            });
            c.registered = want;
        }
        if c.can_deliver() && !self.ready.contains(&key) {
            self.ready.push_back(key);
        }
    }

    fn remove(&mut self, key: ConnKey) {
        if let Some(c) = self.conns.remove(&key) {
            self.by_token.remove(&c.token);
            if c.registered != 0 {
                self.interest.push(Interest {
                    fd: c.stream.as_raw_fd(),
                    token: c.token,
                    old: c.registered,
                    new: 0,
                });
            }
            self.ready.retain(|k| *k != key);
            self.control.retain(|p| p.key != key || p.op == OP_RST);
            self.closed.push(c.stream);
        }
    }

    fn reset(&mut self, key: ConnKey) {
        self.remove(key);
        self.stats.resets_sent += 1;
        self.control.push(key, OP_RST, 0);
    }

    fn push_control(&mut self, key: ConnKey, op: u16, flags: u32) {
        self.control.push(key, op, flags);
    }

    /// Handles one packet the guest sent.
    pub fn recv_from_guest(&mut self, pkt: &VsockPacket<'_, ()>) {
        let key = (pkt.dst_port(), pkt.src_port());
        if pkt.type_() != TYPE_STREAM
            || pkt.src_cid() != self.guest_cid
            || pkt.dst_cid() != HOST_CID
        {
            self.stats.bad_packets += 1;
            debug!(
                "vsock: dropping packet type {} from cid {} to cid {}",
                pkt.type_(),
                pkt.src_cid(),
                pkt.dst_cid()
            );
            if pkt.op() != OP_RST && pkt.src_cid() == self.guest_cid {
                self.reset(key);
            }
            return;
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = pkt.buf_alloc();
            c.peer_fwd_cnt = pkt.fwd_cnt();
            c.credit_requested = false;
        }
        match pkt.op() {
            OP_REQUEST => self.guest_connect(key, pkt.buf_alloc(), pkt.fwd_cnt()),
            OP_RESPONSE => self.guest_accepted(key),
            OP_RW => self.guest_data(key, pkt),
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.push_control(key, OP_CREDIT_UPDATE, 0);
                }
            }
            OP_SHUTDOWN => self.guest_shutdown(key, pkt.flags()),
            OP_RST => self.remove(key),
            op => {
                self.stats.bad_packets += 1;
                debug!("vsock: unknown op {op}");
                self.reset(key);
            }
        }
        self.refresh(key);
    }

    fn guest_connect(&mut self, key: ConnKey, buf_alloc: u32, fwd_cnt: u32) {
        if self.conns.contains_key(&key) || self.conns.len() >= MAX_CONNECTIONS {
            self.reset(key);
            return;
        }
        let path = format!("{}_{}", self.uds_path.display(), key.0);
        match connect_nonblocking(Path::new(&path)) {
            Ok(stream) => {
                let token = self.token();
                let mut c = Connection::new(stream, token, ConnState::Established);
                c.peer_buf_alloc = buf_alloc;
                c.peer_fwd_cnt = fwd_cnt;
                self.by_token.insert(token, key);
                self.conns.insert(key, c);
                self.stats.connections += 1;
                self.push_control(key, OP_RESPONSE, 0);
            }
            Err(e) => {
                debug!("vsock: guest connection to {path} refused: {e}");
                self.reset(key);
            }
        }
    }

    fn guest_accepted(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            self.reset(key);
            return;
        };
        if c.state != ConnState::AwaitingGuest {
            self.reset(key);
            return;
        }
        c.state = ConnState::Established;
        c.deadline = None;
        // The host waits for this line before it writes, so its socket
        // buffer is empty and takes the few bytes at once.
        let ack = format!("OK {}\n", key.0);
        match c.stream.write(ack.as_bytes()) {
            Ok(n) if n == ack.len() => {}
            _ => {
                debug!(
                    "vsock: cannot acknowledge the host connection on port {}",
                    key.0
                );
                self.reset(key);
                return;
            }
        }
        self.stats.connections += 1;
    }

    fn guest_data(&mut self, key: ConnKey, pkt: &VsockPacket<'_, ()>) {
        let Some(c) = self.conns.get_mut(&key) else {
            self.reset(key);
            return;
        };
        if c.state != ConnState::Established || c.guest_done_sending {
            self.reset(key);
            return;
        }
        let Some(data) = pkt.data_slice() else {
            return;
        };
        match c.send_to_host(data) {
            Ok(true) => {
                if c.credit_update_due() {
                    self.push_control(key, OP_CREDIT_UPDATE, 0);
                }
            }
            Ok(false) => {
                warn_limited!(
                    "vsock: guest port {} sent beyond its credit; resetting",
                    key.1
                );
                self.stats.bad_packets += 1;
                self.reset(key);
            }
            Err(e) => {
                debug!("vsock: host socket gone: {e}");
                self.reset(key);
            }
        }
    }

    fn guest_shutdown(&mut self, key: ConnKey, flags: u32) {
        let Some(c) = self.conns.get_mut(&key) else {
            self.reset(key);
            return;
        };
        c.guest_done_receiving |= flags & SHUTDOWN_RCV != 0;
        c.guest_done_sending |= flags & SHUTDOWN_SEND != 0;
        self.finish_half_close(key);
    }

    /// Once the guest is done sending and its data has all reached the host
    /// socket, shuts that socket's write side; once nothing more can flow
    /// either way, closes the connection with a reset, as Linux expects.
    /// Data the guest sent is never dropped by a close.
    fn finish_half_close(&mut self, key: ConnKey) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if !c.guest_done_sending {
            return;
        }
        if !c.tx_buf.is_empty() {
            match c.flush_to_host() {
                Ok(true) => {}
                Ok(false) => return, // EPOLLOUT brings us back
                Err(e) => {
                    debug!("vsock: host socket gone: {e}");
                    self.reset(key);
                    return;
                }
            }
        }
        let _ = c.stream.shutdown(std::net::Shutdown::Write);
        if c.guest_done_receiving || c.host_done {
            self.reset(key);
        }
    }

    /// A socket with `token` is ready (`events`: IN = 1, OUT = 2).
    pub fn socket_ready(&mut self, token: u32, events: u8) {
        if self.pending.contains_key(&token) {
            self.read_connect_line(token);
            return;
        }
        let Some(&key) = self.by_token.get(&token) else {
            return;
        };
        if let Some(c) = self.conns.get_mut(&key) {
            if events & WANT_IN != 0 {
                c.readable = true;
            }
            if events & WANT_OUT != 0 {
                match c.flush_to_host() {
                    Ok(_) => {
                        if c.credit_update_due() {
                            self.push_control(key, OP_CREDIT_UPDATE, 0);
                        }
                    }
                    Err(e) => {
                        debug!("vsock: host socket gone: {e}");
                        self.reset(key);
                        return;
                    }
                }
                self.finish_half_close(key);
            }
        }
        self.refresh(key);
    }

    /// Whether a packet for the guest may be waiting.
    pub fn has_packets(&self) -> bool {
        !self.control.is_empty() || !self.ready.is_empty()
    }

    /// Fills an RX packet for the guest: control packets first, then data
    /// of the connections that have some, in turn.
    pub fn fill_rx(&mut self, pkt: &mut VsockPacket<'_, ()>) -> Filled {
        while let Some(ctl) = self.control.pop() {
            let (fwd_cnt, known) = match self.conns.get_mut(&ctl.key) {
                Some(c) => {
                    c.fwd_cnt_sent = c.fwd_cnt;
                    (c.fwd_cnt, true)
                }
                None => (0, false),
            };
            if !known && ctl.op != OP_RST {
                continue;
            }
            return Filled::Packet(write_header(
                pkt,
                self.guest_cid,
                ctl.key,
                ctl.op,
                ctl.flags,
                0,
                fwd_cnt,
            ));
        }
        if self.ready.is_empty() {
            return Filled::Nothing;
        }
        if pkt.data_slice().is_none_or(|d| d.is_empty()) {
            self.stats.rx_no_room += 1;
            return Filled::NoRoom;
        }
        // Each connection gets one turn: one that stays ready without
        // delivering (refresh puts it back) must not keep us here.
        for _ in 0..self.ready.len() {
            let Some(key) = self.ready.pop_front() else {
                break;
            };
            let filled = self.fill_data(key, pkt);
            self.refresh(key);
            if let Some(len) = filled {
                return Filled::Packet(len);
            }
        }
        Filled::Nothing
    }

    /// Moves host data of `key` into `pkt`, or a SHUTDOWN at end of stream.
    fn fill_data(&mut self, key: ConnKey, pkt: &mut VsockPacket<'_, ()>) -> Option<u32> {
        let guest_cid = self.guest_cid;
        let c = self.conns.get_mut(&key)?;
        if !c.can_deliver() {
            let ask =
                c.peer_credit() == 0 && !c.credit_requested && c.state == ConnState::Established;
            if ask {
                c.credit_requested = true;
                self.push_control(key, OP_CREDIT_REQUEST, 0);
            }
            return None;
        }
        let data = pkt.data_slice()?;
        let room = data.len().min(c.peer_credit() as usize);
        let read = if !c.prefix.is_empty() {
            let n = room.min(c.prefix.len());
            data.subslice(0, n).ok()?.copy_from(&c.prefix[..n]);
            c.prefix.drain(..n);
            Ok(n)
        } else {
            let mut window = data.subslice(0, room).ok()?;
            (&c.stream).read_volatile(&mut window)
        };
        match read {
            Ok(0) => {
                // End of the host's stream: the host will send no more.
                c.host_done = true;
                c.readable = false;
                c.fwd_cnt_sent = c.fwd_cnt;
                let len = write_header(
                    pkt,
                    guest_cid,
                    key,
                    OP_SHUTDOWN,
                    SHUTDOWN_SEND,
                    0,
                    c.fwd_cnt,
                );
                self.finish_half_close(key);
                Some(len)
            }
            Ok(n) => {
                c.rx_cnt = c.rx_cnt.wrapping_add(n as u32);
                c.fwd_cnt_sent = c.fwd_cnt;
                Some(write_header(
                    pkt, guest_cid, key, OP_RW, 0, n as u32, c.fwd_cnt,
                ))
            }
            Err(VolatileMemoryError::IOError(e)) if e.kind() == io::ErrorKind::WouldBlock => {
                c.readable = false;
                None
            }
            Err(e) => {
                debug!("vsock: host socket gone: {e}");
                self.reset(key);
                None
            }
        }
    }

    /// Drops every connection (device reset).
    pub fn reset_all(&mut self) {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for key in keys {
            self.remove(key);
        }
        let pending: Vec<_> = self.pending.drain().collect();
        for (token, p) in pending {
            self.close_pending(token, p);
        }
        self.control.clear();
        self.ready.clear();
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

/// Writes a packet header from the host side of `key`.
#[allow(clippy::too_many_arguments)]
fn write_header(
    pkt: &mut VsockPacket<'_, ()>,
    guest_cid: u64,
    key: ConnKey,
    op: u16,
    flags: u32,
    len: u32,
    fwd_cnt: u32,
) -> u32 {
    pkt.set_src_cid(HOST_CID)
        .set_dst_cid(guest_cid)
        .set_src_port(key.0)
        .set_dst_port(key.1)
        .set_type(TYPE_STREAM)
        .set_op(op)
        .set_flags(flags)
        .set_len(len)
        .set_buf_alloc(TX_BUF_SIZE)
        .set_fwd_cnt(fwd_cnt);
    (PKT_HEADER_SIZE as u32).saturating_add(len)
}
