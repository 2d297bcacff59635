//! Virtio devices (virtio 1.x, "modern" only) and their virtio-mmio
//! transport.
//!
//! Shape, after Firecracker and crosvm:
//! - [`mmio::MmioTransport`] is the device's face on the MMIO bus: feature
//!   negotiation, queue set-up, the status state machine, interrupt status
//!   and config space. It owns the queues while the device is inactive.
//! - A device ([`block`], [`net`], [`vsock`]) implements [`VirtioDevice`].
//!   On DRIVER_OK the transport validates the queues and hands them over in
//!   an [`Activation`]; on reset the device gives them back.
//! - Queue work never happens on a vCPU thread: the guest's QueueNotify is
//!   an ioeventfd that KVM signals without leaving the kernel, and each
//!   device's worker thread (an `event-manager` loop) wakes on it, pops
//!   descriptor chains with `virtio-queue`, runs the back end and signals
//!   the device's irqfd through [`Interrupt`].
//!
//! Everything a guest puts in a queue is untrusted: a request the device
//! cannot make sense of is answered with an error status where the device
//! type has one; a queue the device cannot use at all marks the device
//! DEVICE_NEEDS_RESET. Neither stops the VMM or any other device.

pub mod block;
mod lifecycle;
pub mod mmio;
pub mod net;
pub mod vsock;

#[cfg(test)]
mod hostile;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use thiserror::Error;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

pub use lifecycle::Lifecycle;
pub use mmio::MmioTransport;

/// Guest memory as devices see it.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;

/// Size of one virtio-mmio device window.
pub const VIRTIO_MMIO_SLOT_SIZE: u64 = 0x1000;
/// Offset of QueueNotify in the window (where the ioeventfds sit).
pub const VIRTIO_MMIO_QUEUE_NOTIFY: u64 = 0x50;

/// Feature bits common to every device.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// Indirect descriptors (handled by `virtio-queue`).
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 =
    1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC;
/// Used/avail event indexes (notification suppression).
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// InterruptStatus bit: a queue has new used entries.
pub const VIRTIO_INT_VRING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// InterruptStatus bit: the configuration (or device status) changed.
pub const VIRTIO_INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// The interrupt line of one device: the InterruptStatus register the
/// driver reads and acknowledges, and the irqfd that raises the IRQ.
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    irqfd: EventFd,
    needs_reset: AtomicBool,
}

impl Interrupt {
    /// An interrupt raised through `irqfd`.
    pub fn new(irqfd: EventFd) -> Self {
        Self {
            status: AtomicU32::new(0),
            irqfd,
            needs_reset: AtomicBool::new(false),
        }
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::SeqCst);
        if let Err(e) = self.irqfd.write(1) {
            // The counter cannot overflow in practice; nothing else fails.
            tracing::warn!("virtio: cannot raise the interrupt: {e}");
        }
    }

    /// Tells the driver that a queue has new used entries.
    pub fn signal_used_queue(&self) {
        self.raise(VIRTIO_INT_VRING);
    }

    /// Tells the driver that the configuration or device status changed.
    pub fn signal_config_change(&self) {
        self.raise(VIRTIO_INT_CONFIG);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    /// InterruptACK: clears `bits`.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The device can no longer work with what the driver gave it (a
    /// broken queue): DEVICE_NEEDS_RESET is reported in the status
    /// register, and the driver is told through a config interrupt.
    pub fn signal_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.signal_config_change();
        }
    }

    /// Whether the device has asked for a reset.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    /// Clears everything (device reset).
    pub fn reset(&self) {
        self.status.store(0, Ordering::SeqCst);
        self.needs_reset.store(false, Ordering::SeqCst);
    }
}

/// What a device receives when the driver sets DRIVER_OK.
#[derive(Debug)]
pub struct Activation {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queues, validated, in order.
    pub queues: Vec<Queue>,
    /// The eventfd each queue's notifications arrive on, in order.
    pub queue_events: Vec<EventFd>,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
    /// Features the driver accepted.
    pub acked_features: u64,
}

/// A device could not be activated.
#[derive(Debug, Error)]
pub enum ActivateError {
    /// An eventfd operation failed.
    #[error("cannot signal the device's worker")]
    Event(#[source] io::Error),
    /// The device was already active.
    #[error("the device is already active")]
    AlreadyActive,
    /// The device needs more queues than it got.
    #[error("the device needs {needed} queues, got {got}")]
    Queues {
        /// Queues the device needs.
        needed: usize,
        /// Queues it got.
        got: usize,
    },
}

/// A virtio device, as the transport drives it.
pub trait VirtioDevice: Send {
    /// The virtio device ID (1 net, 2 block, 19 vsock…).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; also the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers (VIRTIO_F_VERSION_1 included).
    fn avail_features(&self) -> u64;
    /// Reads the device-specific configuration space.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space (ignored by default:
    /// our devices have no writable configuration).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        let _ = (offset, data);
    }
    /// Starts the device on the queues it is given.
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// Stops the device and returns its queues (None if it was not active).
    fn reset(&mut self) -> Option<Vec<Queue>>;
}

/// Copies the part of `config` at `offset` into `data`; bytes beyond the
/// end read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

/// Completes every chain the driver has made available, with notification
/// suppression (EVENT_IDX) when negotiated: `handle` consumes a chain and
/// returns the number of bytes it wrote into it. Returns whether the driver
/// must be interrupted. A queue whose rings cannot be read (a hostile or
/// broken driver) is an error: the caller marks the device
/// DEVICE_NEEDS_RESET.
pub(crate) fn complete_chains<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut handle: F,
) -> Result<bool, virtio_queue::Error>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    complete_chains_while(queue, mem, |_| true, &mut (), |_, chain| handle(chain))
}

/// [`complete_chains`], asking `go_on(state)` before each chain: when it
/// says no, the remaining chains stay available and notifications stay
/// off (the caller comes back when it can take more). `state` is lent to
/// both closures in turn.
pub(crate) fn complete_chains_while<S, G, F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    mut go_on: G,
    state: &mut S,
    mut handle: F,
) -> Result<bool, virtio_queue::Error>
where
    S: ?Sized,
    G: FnMut(&S) -> bool,
    F: FnMut(&mut S, DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    let mut used_any = false;
    // Each round drains what is available; a driver adding buffers as fast
    // as we complete them cannot keep us here for ever.
    'rounds: for _ in 0..MAX_ROUNDS {
        queue.disable_notification(mem)?;
        // Fails on a corrupt available index, which pop would only skip.
        let _check = queue.iter(mem)?;
        loop {
            if !go_on(state) {
                break 'rounds;
            }
            let Some(chain) = queue.pop_descriptor_chain(mem) else {
                break;
            };
            let head = chain.head_index();
            let len = handle(state, chain);
            queue.add_used(mem, head, len)?;
            used_any = true;
        }
        if !queue.enable_notification(mem)? {
            break;
        }
    }
    Ok(used_any && queue.needs_notification(mem)?)
}

/// Rounds of [`complete_chains`] per wake-up.
const MAX_ROUNDS: usize = 64;

/// Reads and discards whatever an eventfd has accumulated.
pub(crate) fn drain_event(event: &EventFd) {
    // EAGAIN (nothing pending) is the only expected error.
    let _ = event.read();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_are_bounded() {
        let config = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 4];
        read_config_bytes(&config, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&config, 100, &mut d);
        assert_eq!(d, [0; 4]);
        read_config_bytes(&config, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn interrupt_status_is_acked_by_bit() {
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let i = Interrupt::new(irq.try_clone().unwrap());
        i.signal_used_queue();
        i.signal_config_change();
        assert_eq!(i.status(), 3);
        assert_eq!(irq.read().unwrap(), 2);
        i.ack(VIRTIO_INT_VRING);
        assert_eq!(i.status(), VIRTIO_INT_CONFIG);
    }
}
