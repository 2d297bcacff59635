//! virtio-vsock with a host side on Unix sockets, compatible with
//! Firecracker's hybrid vsock (see `muxer`). Queues: RX 0, TX 1, event 2
//! (never used: we send no transport events). Packets are parsed with the
//! `virtio-vsock` crate; payloads move directly between guest memory and
//! the host sockets.
//!
//! - this file: configuration, the device and its RX/TX processing;
//! - `connection`: one stream and its credit accounting;
//! - `muxer`: streams, host connections and control packets;
//! - `event_handler`: the worker-thread side.

mod connection;
mod control;
mod event_handler;
pub mod muxer;
#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;

use thiserror::Error;
use tracing::debug;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use virtio_vsock::packet::VsockPacket;

use super::Lifecycle;
use super::{
    complete_chains_while, read_config_bytes, ActivateError, Activation, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::ratelimit::warn_limited;
pub use connection::TX_BUF_SIZE;
pub use control::TX_STOP;
pub use event_handler::VsockHandler;
pub use muxer::{Filled, Muxer, VsockStats};

/// virtio device ID of a socket device.
pub const VIRTIO_ID_VSOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
/// The host's CID.
pub const HOST_CID: u64 = 2;
/// Entries per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest payload per packet.
pub const MAX_PKT_DATA: u32 = 64 * 1024;
const RX: usize = 0;
const TX: usize = 1;
/// TX/RX rounds per wake-up in [`Vsock::process_queues`].
const MAX_PUMP_ROUNDS: usize = 64;

/// A vsock device to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    pub cid: u32,
    /// The host-side Unix socket; guest connections to host port P go to
    /// `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// A vsock device could not be attached.
#[derive(Debug, Error)]
pub enum VirtioVsockError {
    /// CIDs 0–2 are reserved; u32::MAX is "any".
    #[error("vsock CID {0} is reserved; use 3 or more")]
    ReservedCid(u32),
    /// The socket cannot be bound.
    #[error("cannot listen on vsock socket {path}")]
    Listen {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
}

/// The virtio-vsock device.
pub struct Vsock {
    config: [u8; 8],
    lifecycle: Lifecycle,
    muxer: Muxer,
}

impl Vsock {
    /// Creates the device and listens on its socket.
    pub fn new(config: &VsockConfig) -> Result<Self, VirtioVsockError> {
        if config.cid <= 2 || config.cid == u32::MAX {
            return Err(VirtioVsockError::ReservedCid(config.cid));
        }
        let muxer = Muxer::new(u64::from(config.cid), &config.uds_path).map_err(|source| {
            VirtioVsockError::Listen {
                path: config.uds_path.clone(),
                source,
            }
        })?;
        Ok(Self {
            config: u64::from(config.cid).to_le_bytes(),
            lifecycle: Lifecycle::new().map_err(VirtioVsockError::EventFd)?,
            muxer,
        })
    }

    /// The connection multiplexer.
    pub fn muxer(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// Hands the packets the guest queued on TX to the muxer, pausing while
    /// the muxer owes the guest too many control packets (see `control`).
    /// Returns whether TX paused with packets possibly left in the ring.
    pub(crate) fn process_tx(&mut self) -> bool {
        let Some(active) = self.lifecycle.active.as_mut() else {
            return false;
        };
        let muxer = &mut self.muxer;
        let mem = &active.mem;
        let mut paused = false;
        let result = complete_chains_while(
            &mut active.queues[TX],
            mem,
            |m| {
                paused = m.tx_blocked();
                !paused
            },
            muxer,
            |muxer, mut chain| {
                match VsockPacket::from_tx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                    Ok(pkt) => muxer.recv_from_guest(&pkt),
                    Err(e) => debug!("vsock: malformed TX chain dropped: {e:?}"),
                }
                0
            },
        );
        match result {
            Ok(true) => active.interrupt.signal_used_queue(),
            Ok(false) => {}
            Err(e) => {
                warn_limited!("vsock: TX queue unusable ({e}); the device needs a reset");
                active.interrupt.signal_needs_reset();
                return false;
            }
        }
        paused
    }

    /// TX then RX until TX is no longer paused by a control backlog that RX
    /// buffers can drain (bounded: a guest refilling both rings from a vCPU
    /// cannot keep the worker here).
    pub(crate) fn process_queues(&mut self) {
        for _ in 0..MAX_PUMP_ROUNDS {
            let paused = self.process_tx();
            self.process_rx();
            if !paused || self.muxer.tx_blocked() {
                break;
            }
        }
    }

    /// Fills RX buffers with whatever the muxer has for the guest.
    pub(crate) fn process_rx(&mut self) {
        let Some(active) = self.lifecycle.active.as_mut() else {
            return;
        };
        let mem = &active.mem;
        let rx = &mut active.queues[RX];
        let mut delivered = false;
        while self.muxer.has_packets() {
            if let Err(e) = rx.iter(mem) {
                warn_limited!("vsock: RX queue unusable ({e}); the device needs a reset");
                active.interrupt.signal_needs_reset();
                return;
            }
            let Some(mut chain) = rx.pop_descriptor_chain(mem) else {
                match rx.enable_notification(mem) {
                    Ok(true) => continue,
                    _ => break, // resumed by the next RX notification
                }
            };
            let head = chain.head_index();
            let used = match VsockPacket::from_rx_virtq_chain(mem, &mut chain, MAX_PKT_DATA) {
                Ok(mut pkt) => match self.muxer.fill_rx(&mut pkt) {
                    Filled::Packet(len) => len,
                    Filled::NoRoom => {
                        warn_limited!("vsock: RX buffer without room for data returned empty");
                        0
                    }
                    Filled::Nothing => {
                        // Nothing after all: give the buffer back.
                        rx.go_to_previous_position();
                        break;
                    }
                },
                Err(e) => {
                    debug!("vsock: malformed RX chain returned empty: {e:?}");
                    0
                }
            };
            if let Err(e) = rx.add_used(mem, head, used) {
                warn_limited!("vsock: RX used ring unusable ({e}); the device needs a reset");
                active.interrupt.signal_needs_reset();
                return;
            }
            delivered = true;
        }
        if delivered && rx.needs_notification(mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_INDIRECT_DESC
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.lifecycle.activate(a, 3)
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        let queues = self.lifecycle.reset("vsock")?;
        self.muxer.reset_all();
        Some(queues)
    }
}
