//! One vsock stream between a guest port and a host Unix socket, with
//! virtio-vsock's credit-based flow control in both directions.
//!
//! Guest → host: we advertise `buf_alloc` = [`TX_BUF_SIZE`] and count in
//! `fwd_cnt` the bytes written to the host socket. What the socket does not
//! take at once waits in `tx_buf`; a guest that sends beyond its credit
//! (more than fits there) is in breach of the protocol and gets a reset.
//!
//! Host → guest: we send at most the guest's credit,
//! `peer_buf_alloc − (rx_cnt − peer_fwd_cnt)`, and stop reading the host
//! socket while it is zero.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::unix::net::UnixStream;

use vm_memory::{VolatileSlice, WriteVolatile};

/// Bytes of guest data we buffer per connection (our `buf_alloc`).
pub const TX_BUF_SIZE: u32 = 256 * 1024;

/// Where a connection stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: REQUEST sent to the guest, waiting for RESPONSE.
    AwaitingGuest,
    /// Data may flow.
    Established,
}

/// A stream connection.
#[derive(Debug)]
pub struct Connection {
    pub(super) stream: UnixStream,
    pub(super) token: u32,
    pub(super) state: ConnState,
    /// Guest data not yet taken by the host socket.
    pub(super) tx_buf: VecDeque<u8>,
    /// Guest bytes written to the host socket (wrapping, as on the wire).
    pub(super) fwd_cnt: u32,
    /// `fwd_cnt` as last told to the guest.
    pub(super) fwd_cnt_sent: u32,
    /// Host bytes sent to the guest.
    pub(super) rx_cnt: u32,
    pub(super) peer_buf_alloc: u32,
    pub(super) peer_fwd_cnt: u32,
    /// Host data to send before anything read from the socket (bytes that
    /// followed the CONNECT line).
    pub(super) prefix: Vec<u8>,
    /// The socket may have data (its EPOLLIN is then not watched).
    pub(super) readable: bool,
    /// The host will send no more (EOF seen, SHUTDOWN sent).
    pub(super) host_done: bool,
    /// The guest will send no more; shut the socket's write side once
    /// `tx_buf` is flushed.
    pub(super) guest_done_sending: bool,
    /// The guest will receive no more.
    pub(super) guest_done_receiving: bool,
    /// A credit request was sent and not yet answered.
    pub(super) credit_requested: bool,
    /// The epoll interest currently registered (IN = 1, OUT = 2).
    pub(super) registered: u8,
    /// While the guest has not answered a host connection: when to give up.
    pub(super) deadline: Option<std::time::Instant>,
}

impl Connection {
    pub(super) fn new(stream: UnixStream, token: u32, state: ConnState) -> Self {
        Self {
            stream,
            token,
            state,
            tx_buf: VecDeque::new(),
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            prefix: Vec::new(),
            readable: false,
            host_done: false,
            guest_done_sending: false,
            guest_done_receiving: false,
            credit_requested: false,
            registered: 0,
            deadline: None,
        }
    }

    /// Bytes the guest can take now.
    pub(super) fn peer_credit(&self) -> u32 {
        let in_flight = self.rx_cnt.wrapping_sub(self.peer_fwd_cnt);
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Whether there is host data to deliver and room for it in the guest.
    pub(super) fn can_deliver(&self) -> bool {
        self.state == ConnState::Established
            && !self.guest_done_receiving
            && (!self.prefix.is_empty() || (self.readable && !self.host_done))
            && self.peer_credit() > 0
    }

    /// Takes guest data for the host socket. Returns false if the guest
    /// overran the credit it was given.
    pub(super) fn send_to_host(&mut self, data: &VolatileSlice<'_>) -> io::Result<bool> {
        let mut taken = 0;
        if self.tx_buf.is_empty() {
            match (&self.stream).write_volatile(data) {
                Ok(n) => taken = n,
                Err(vm_memory::VolatileMemoryError::IOError(e))
                    if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(io::Error::other(e.to_string())),
            }
        }
        self.fwd_cnt = self.fwd_cnt.wrapping_add(taken as u32);
        let rest = data.len() - taken;
        if rest == 0 {
            return Ok(true);
        }
        if self.tx_buf.len() + rest > TX_BUF_SIZE as usize {
            return Ok(false);
        }
        let mut tail = vec![0u8; rest];
        data.subslice(taken, rest)
            .map_err(|e| io::Error::other(e.to_string()))?
            .copy_to(&mut tail[..]);
        self.tx_buf.extend(tail);
        Ok(true)
    }

    /// Writes buffered guest data to the host socket; returns whether
    /// everything was written.
    pub(super) fn flush_to_host(&mut self) -> io::Result<bool> {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            match self.stream.write(front) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.tx_buf.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Whether the guest should hear about our freed buffer space: after a
    /// quarter of it was forwarded since we last said.
    pub(super) fn credit_update_due(&self) -> bool {
        self.fwd_cnt.wrapping_sub(self.fwd_cnt_sent) >= TX_BUF_SIZE / 4
    }
}
