//! virtio-net on a tap interface: RX queue 0, TX queue 1, MAC in config
//! space, no offloads.
//!
//! Flow control on receive: a frame read from the tap is held until the
//! guest has an RX buffer for it; while the guest has none, the worker
//! stops watching the tap (the kernel queues, or drops, frames there as a
//! NIC with a full ring would) and resumes when the guest adds buffers. A
//! frame the guest could have received is never read and thrown away.
//!
//! A back end that ends (a read of 0 bytes) or fails for good (a tap whose
//! interface was deleted reads EBADFD and polls as an error for ever) is
//! given up: it is no longer watched or read, the guest's frames are
//! dropped and counted, and the VM goes on. Each RX pass reads at most
//! [`RX_BUDGET`] frames, so a flood of runts cannot hold the worker.
//!
//! - this file: configuration, the device, RX and TX (no threads or KVM:
//!   the back end is any datagram fd, so tests use a socketpair);
//! - `tap`: opening the tap; `event_handler`: the worker-thread side.

mod event_handler;
pub mod tap;

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;

use thiserror::Error;
use tracing::{debug, warn};
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::Lifecycle;
use super::{
    read_config_bytes, ActivateError, Activation, GuestMemoryMmap, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_INDIRECT_DESC,
};
use crate::ratelimit::warn_limited;
pub use event_handler::NetHandler;
pub use tap::{Tap, TapError, VNET_HDR_LEN};

/// virtio device ID of a network device.
pub const VIRTIO_ID_NET: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_NET;
/// The device has a MAC address in config space.
pub const VIRTIO_NET_F_MAC: u64 = 1 << virtio_bindings::virtio_net::VIRTIO_NET_F_MAC;
/// Entries per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Largest frame handled, vnet header included.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65535;
const RX: usize = 0;
const TX: usize = 1;
/// Back-end reads per RX pass.
pub const RX_BUDGET: usize = 256;

/// A network interface to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Host tap interface name.
    pub tap: String,
    /// Guest MAC address; a locally administered one is derived if None.
    pub mac: Option<[u8; 6]>,
    /// Open (or create) the tap inside this network namespace (a
    /// `/proc/<pid>/ns/net` or `/var/run/netns/<name>` file) instead of the
    /// VMM's own; a tap created there is removed with the VM.
    pub netns: Option<std::path::PathBuf>,
}

/// A network device could not be attached.
#[derive(Debug, Error)]
pub enum VirtioNetError {
    /// The tap could not be opened.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
}

/// A datagram back end: one `read` is one frame, one `write` sends one.
pub trait FrameBackend: Read + Write + AsRawFd + Send {}
impl<T: Read + Write + AsRawFd + Send> FrameBackend for T {}

/// Frame counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest (vnet headers excluded).
    pub rx_bytes: u64,
    /// Frames sent by the guest.
    pub tx_frames: u64,
    /// Bytes sent by the guest (vnet headers excluded).
    pub tx_bytes: u64,
    /// Frames dropped because the guest's buffer was too small.
    pub rx_too_big: u64,
    /// Guest frames dropped: malformed chains or back-end errors.
    pub tx_dropped: u64,
    /// Frames from the back end too short to carry anything.
    pub rx_runts: u64,
    /// Whether the back end was given up (end of stream or a hard error).
    pub backend_failed: bool,
}

/// The virtio-net device.
pub struct Net {
    backend: Box<dyn FrameBackend>,
    config: [u8; 10],
    features: u64,
    lifecycle: Lifecycle,
    /// A frame read from the back end, waiting for a guest buffer.
    rx_frame: Vec<u8>,
    rx_len: usize,
    tx_frame: Vec<u8>,
    stats: NetStats,
}

/// A MAC derived from a name: locally administered, unicast, stable.
pub fn derived_mac(name: &str) -> [u8; 6] {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    let b = h.to_le_bytes();
    [0x02, 0xc0, b[0], b[1], b[2], b[3]]
}

impl Net {
    /// A device on an open back end with `mac`.
    pub fn new(backend: Box<dyn FrameBackend>, mac: [u8; 6]) -> Result<Self, VirtioNetError> {
        let mut config = [0u8; 10];
        config[..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&1u16.to_le_bytes()); // status: link up
        config[8..10].copy_from_slice(&1u16.to_le_bytes()); // one queue pair
        Ok(Self {
            backend,
            config,
            features: VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MAC | VIRTIO_RING_F_INDIRECT_DESC,
            lifecycle: Lifecycle::new().map_err(VirtioNetError::EventFd)?,
            rx_frame: vec![0; MAX_FRAME],
            rx_len: 0,
            tx_frame: vec![0; MAX_FRAME],
            stats: NetStats::default(),
        })
    }

    /// Opens the tap of `config`.
    pub fn with_tap(config: &NetConfig) -> Result<Self, VirtioNetError> {
        let tap = match &config.netns {
            Some(netns) => Tap::open_in(&config.tap, netns)?,
            None => Tap::open(&config.tap)?,
        };
        let mac = config.mac.unwrap_or_else(|| derived_mac(&config.tap));
        Self::new(Box::new(tap), mac)
    }

    /// The MAC address.
    pub fn mac(&self) -> [u8; 6] {
        let mut mac = [0u8; 6];
        mac.copy_from_slice(&self.config[..6]);
        mac
    }

    /// Frame counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// Moves frames from the back end to the guest while the guest has RX
    /// buffers. Returns false when the back end should not be watched: the
    /// guest has no buffers (until the RX queue is notified) or the back
    /// end was given up (for good).
    pub(crate) fn process_rx(&mut self) -> bool {
        if self.stats.backend_failed {
            return false;
        }
        let Some(active) = self.lifecycle.active.as_mut() else {
            return true;
        };
        let mem = &active.mem;
        let rx = &mut active.queues[RX];
        let mut delivered = false;
        let mut keep_reading = true;
        let mut budget = RX_BUDGET;
        loop {
            if self.rx_len == 0 {
                if budget == 0 {
                    break; // level-triggered: the worker comes back
                }
                budget -= 1;
                match self.backend.read(&mut self.rx_frame) {
                    Ok(n) if n > VNET_HDR_LEN => self.rx_len = n,
                    Ok(0) => {
                        warn!("virtio-net: the back end ended; the guest's network stops");
                        self.stats.backend_failed = true;
                        keep_reading = false;
                        break;
                    }
                    Ok(_) => {
                        self.stats.rx_runts += 1;
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        warn!("virtio-net: reading the back end failed ({e}); the guest's network stops");
                        self.stats.backend_failed = true;
                        keep_reading = false;
                        break;
                    }
                }
            }
            if let Err(e) = rx.iter(mem) {
                warn_limited!("virtio-net: RX queue unusable ({e}); the device needs a reset");
                active.interrupt.signal_needs_reset();
                return false;
            }
            let Some(chain) = rx.pop_descriptor_chain(mem) else {
                // Re-check after enabling notifications, in case the guest
                // added buffers meanwhile.
                match rx.enable_notification(mem) {
                    Ok(true) => continue,
                    _ => {
                        keep_reading = false;
                        break;
                    }
                }
            };
            let head = chain.head_index();
            let frame = &mut self.rx_frame[..self.rx_len];
            // No offloads were negotiated: whatever the tap said in its
            // header (checksum or GSO flags) is not the guest's to see.
            frame[..10].fill(0);
            // num_buffers = 1: no mergeable buffers.
            frame[10..12].copy_from_slice(&1u16.to_le_bytes());
            let used = match write_to_chain(mem, chain, frame) {
                Some(n) => {
                    self.stats.rx_frames += 1;
                    self.stats.rx_bytes += (self.rx_len - VNET_HDR_LEN) as u64;
                    n
                }
                None => {
                    debug!("virtio-net: RX buffer too small or malformed; frame dropped");
                    self.stats.rx_too_big += 1;
                    0
                }
            };
            self.rx_len = 0;
            if let Err(e) = rx.add_used(mem, head, used) {
                warn_limited!("virtio-net: RX used ring unusable ({e}); the device needs a reset");
                active.interrupt.signal_needs_reset();
                return false;
            }
            delivered = true;
        }
        if delivered && rx.needs_notification(mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        keep_reading
    }

    /// Sends every frame the guest queued on TX.
    pub(crate) fn process_tx(&mut self) {
        let Some(active) = self.lifecycle.active.as_mut() else {
            return;
        };
        let (backend, frame, stats) = (&mut self.backend, &mut self.tx_frame, &mut self.stats);
        let result = super::complete_chains(&mut active.queues[TX], &active.mem, |chain| {
            match read_from_chain(&active.mem, chain, frame) {
                Some(len) => {
                    // No offloads were negotiated: send a plain header.
                    frame[..10].fill(0);
                    // A datagram fd takes a frame whole or not at all.
                    if stats.backend_failed {
                        stats.tx_dropped += 1;
                        return 0;
                    }
                    match backend.write(&frame[..len]) {
                        Ok(n) if n == len => {
                            stats.tx_frames += 1;
                            stats.tx_bytes += (len - VNET_HDR_LEN) as u64;
                        }
                        Ok(n) => {
                            debug!("virtio-net: back end took {n} of {len} bytes");
                            stats.tx_dropped += 1;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            debug!("virtio-net: back end full, frame dropped");
                            stats.tx_dropped += 1;
                        }
                        Err(e) => {
                            warn_limited!("virtio-net: back end refused a frame: {e}");
                            stats.tx_dropped += 1;
                        }
                    }
                }
                None => {
                    debug!("virtio-net: malformed TX chain dropped");
                    stats.tx_dropped += 1;
                }
            }
            0
        });
        match result {
            Ok(true) => active.interrupt.signal_used_queue(),
            Ok(false) => {}
            Err(e) => {
                warn_limited!("virtio-net: TX queue unusable ({e}); the device needs a reset");
                active.interrupt.signal_needs_reset();
            }
        }
    }
}

/// Copies `frame` into the chain's device-writable buffers; returns the
/// bytes written, or None if the chain is malformed or too small.
fn write_to_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    frame: &[u8],
) -> Option<u32> {
    let mut left = frame;
    for desc in chain {
        if !desc.is_write_only() {
            return None;
        }
        if left.is_empty() {
            break;
        }
        let n = left.len().min(desc.len() as usize);
        mem.write_slice(&left[..n], desc.addr()).ok()?;
        left = &left[n..];
    }
    left.is_empty().then_some(frame.len() as u32)
}

/// Gathers the chain's device-readable buffers into `frame`; returns the
/// length, or None if the chain is malformed, too long or too short.
fn read_from_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    frame: &mut [u8],
) -> Option<usize> {
    let mut len = 0usize;
    for desc in chain {
        if desc.is_write_only() {
            return None;
        }
        let n = desc.len() as usize;
        let end = len.checked_add(n).filter(|end| *end <= frame.len())?;
        mem.read_slice(&mut frame[len..end], desc.addr()).ok()?;
        len = end;
    }
    (len > VNET_HDR_LEN).then_some(len)
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.lifecycle.activate(a, 2)
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        let queues = self.lifecycle.reset("virtio-net")?;
        self.rx_len = 0;
        Some(queues)
    }
}

#[cfg(test)]
mod tests;
