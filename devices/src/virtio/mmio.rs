//! The virtio-mmio transport, version 2 ("modern"), as the virtio 1.2
//! specification (section 4.2.2) lays out its registers.
//!
//! The transport keeps each queue's configuration as the driver writes it
//! and builds the `virtio-queue` queues only at DRIVER_OK, when it can check
//! them all against guest memory: a size that is zero, not a power of two or
//! over the maximum, misaligned or out-of-memory rings, a queue left not
//! ready — any of these marks the device DEVICE_NEEDS_RESET instead of
//! activating it. Feature negotiation only accepts what the device offers
//! and requires VIRTIO_F_VERSION_1. Writes that the state machine does not
//! allow are ignored (and logged at debug level), never fatal.

use std::sync::{Arc, Mutex};

use crate::ratelimit::warn_limited;
use tracing::{debug, warn};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::{
    drain_event, Activation, GuestMemoryMmap, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1,
    VIRTIO_RING_F_EVENT_IDX,
};
use virtio_bindings::virtio_config;
use virtio_bindings::virtio_mmio as mmio;

use crate::bus::{lock, BusDevice};

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
/// "CRRL": Corral's vendor ID.
const VENDOR_ID: u32 = u32::from_le_bytes(*b"CRRL");

// Register offsets, from the kernel's virtio_mmio.h (virtio-bindings).
const REG_MAGIC: u64 = mmio::VIRTIO_MMIO_MAGIC_VALUE as u64;
const REG_VERSION: u64 = mmio::VIRTIO_MMIO_VERSION as u64;
const REG_DEVICE_ID: u64 = mmio::VIRTIO_MMIO_DEVICE_ID as u64;
const REG_VENDOR_ID: u64 = mmio::VIRTIO_MMIO_VENDOR_ID as u64;
const REG_DEVICE_FEATURES: u64 = mmio::VIRTIO_MMIO_DEVICE_FEATURES as u64;
const REG_DEVICE_FEATURES_SEL: u64 = mmio::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
const REG_DRIVER_FEATURES: u64 = mmio::VIRTIO_MMIO_DRIVER_FEATURES as u64;
const REG_DRIVER_FEATURES_SEL: u64 = mmio::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
const REG_QUEUE_SEL: u64 = mmio::VIRTIO_MMIO_QUEUE_SEL as u64;
const REG_QUEUE_NUM_MAX: u64 = mmio::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
const REG_QUEUE_NUM: u64 = mmio::VIRTIO_MMIO_QUEUE_NUM as u64;
const REG_QUEUE_READY: u64 = mmio::VIRTIO_MMIO_QUEUE_READY as u64;
const REG_QUEUE_NOTIFY: u64 = mmio::VIRTIO_MMIO_QUEUE_NOTIFY as u64;
const REG_INTERRUPT_STATUS: u64 = mmio::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
const REG_INTERRUPT_ACK: u64 = mmio::VIRTIO_MMIO_INTERRUPT_ACK as u64;
const REG_STATUS: u64 = mmio::VIRTIO_MMIO_STATUS as u64;
const REG_QUEUE_DESC_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
const REG_QUEUE_DESC_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
const REG_QUEUE_DRIVER_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
const REG_QUEUE_DRIVER_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
const REG_QUEUE_DEVICE_LOW: u64 = mmio::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
const REG_QUEUE_DEVICE_HIGH: u64 = mmio::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
const REG_CONFIG_GENERATION: u64 = mmio::VIRTIO_MMIO_CONFIG_GENERATION as u64;
const REG_CONFIG: u64 = mmio::VIRTIO_MMIO_CONFIG as u64;

/// Device status bits.
pub const STATUS_ACKNOWLEDGE: u32 = virtio_config::VIRTIO_CONFIG_S_ACKNOWLEDGE;
/// The driver knows how to drive the device.
pub const STATUS_DRIVER: u32 = virtio_config::VIRTIO_CONFIG_S_DRIVER;
/// The driver is set up and the device live.
pub const STATUS_DRIVER_OK: u32 = virtio_config::VIRTIO_CONFIG_S_DRIVER_OK;
/// Feature negotiation is complete.
pub const STATUS_FEATURES_OK: u32 = virtio_config::VIRTIO_CONFIG_S_FEATURES_OK;
/// The device has hit an error it cannot recover from without a reset.
pub const STATUS_NEEDS_RESET: u32 = virtio_config::VIRTIO_CONFIG_S_NEEDS_RESET;
/// The driver has given up on the device.
pub const STATUS_FAILED: u32 = virtio_config::VIRTIO_CONFIG_S_FAILED;

/// A queue as the driver configured it.
#[derive(Debug, Clone, Copy, Default)]
struct QueueConfig {
    size: u32,
    ready: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

fn set_low(value: &mut u64, low: u32) {
    *value = (*value & !0xffff_ffff) | u64::from(low);
}

fn set_high(value: &mut u64, high: u32) {
    *value = (*value & 0xffff_ffff) | (u64::from(high) << 32);
}

/// One virtio device on the MMIO bus.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<Interrupt>,
    queue_events: Vec<EventFd>,
    queue_max: Vec<u16>,
    queues: Vec<QueueConfig>,
    activated: bool,
    status: u32,
    features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    queue_select: u32,
    config_generation: u32,
}

impl MmioTransport {
    /// A transport for `device`, raising `interrupt`; one notification
    /// eventfd is created per queue (see [`MmioTransport::queue_events`]).
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> std::io::Result<Self> {
        let queue_max = lock(&device).queue_max_sizes().to_vec();
        let queue_events = queue_max
            .iter()
            .map(|_| EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            queues: vec![QueueConfig::default(); queue_max.len()],
            device,
            mem,
            interrupt,
            queue_events,
            queue_max,
            activated: false,
            status: 0,
            features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            queue_select: 0,
            config_generation: 0,
        })
    }

    /// The per-queue notification eventfds, for the VMM to register as
    /// ioeventfds on QueueNotify (datamatch = queue index).
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_events
    }

    /// The device status register as the driver sees it.
    pub fn status(&self) -> u32 {
        let needs_reset = if self.interrupt.needs_reset() {
            STATUS_NEEDS_RESET
        } else {
            0
        };
        self.status | needs_reset
    }

    fn selected_queue(&mut self) -> Option<&mut QueueConfig> {
        // Queue registers may only change before the device is live.
        if self.status & STATUS_DRIVER_OK != 0 {
            return None;
        }
        self.queues.get_mut(self.queue_select as usize)
    }

    fn read_register(&self, offset: u64) -> u32 {
        let queue = self.queues.get(self.queue_select as usize);
        match offset {
            REG_MAGIC => MAGIC,
            REG_VERSION => VERSION,
            REG_DEVICE_ID => lock(&self.device).device_type(),
            REG_VENDOR_ID => VENDOR_ID,
            REG_DEVICE_FEATURES => {
                let features = lock(&self.device).avail_features();
                match self.features_select {
                    0 => features as u32,
                    1 => (features >> 32) as u32,
                    _ => 0,
                }
            }
            REG_QUEUE_NUM_MAX => self
                .queue_max
                .get(self.queue_select as usize)
                .map_or(0, |&m| u32::from(m)),
            REG_QUEUE_READY => u32::from(queue.is_some_and(|q| q.ready)),
            REG_INTERRUPT_STATUS => self.interrupt.status(),
            REG_STATUS => self.status(),
            REG_CONFIG_GENERATION => self.config_generation,
            _ => {
                debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            REG_DEVICE_FEATURES_SEL => self.features_select = value,
            REG_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            REG_DRIVER_FEATURES => self.write_driver_features(value),
            REG_QUEUE_SEL => self.queue_select = value,
            REG_QUEUE_NUM => {
                if let Some(q) = self.selected_queue() {
                    q.size = value;
                }
            }
            REG_QUEUE_READY => {
                if let Some(q) = self.selected_queue() {
                    q.ready = value == 1;
                }
            }
            REG_QUEUE_DESC_LOW => self.with_queue(|q| set_low(&mut q.desc, value)),
            REG_QUEUE_DESC_HIGH => self.with_queue(|q| set_high(&mut q.desc, value)),
            REG_QUEUE_DRIVER_LOW => self.with_queue(|q| set_low(&mut q.driver, value)),
            REG_QUEUE_DRIVER_HIGH => self.with_queue(|q| set_high(&mut q.driver, value)),
            REG_QUEUE_DEVICE_LOW => self.with_queue(|q| set_low(&mut q.device, value)),
            REG_QUEUE_DEVICE_HIGH => self.with_queue(|q| set_high(&mut q.device, value)),
            REG_QUEUE_NOTIFY => self.notify(value),
            REG_INTERRUPT_ACK => self.interrupt.ack(value),
            REG_STATUS => self.write_status(value),
            _ => debug!("virtio-mmio: write of {value:#x} to unknown register {offset:#x}"),
        }
    }

    fn with_queue(&mut self, f: impl FnOnce(&mut QueueConfig)) {
        match self.selected_queue() {
            Some(q) if !q.ready => f(q),
            _ => debug!("virtio-mmio: queue address write ignored (queue ready or device live)"),
        }
    }

    fn write_driver_features(&mut self, value: u32) {
        if self.status & (STATUS_DRIVER | STATUS_FEATURES_OK) != STATUS_DRIVER {
            debug!("virtio-mmio: driver features written outside negotiation, ignored");
            return;
        }
        match self.driver_features_select {
            0 => set_low(&mut self.driver_features, value),
            1 => set_high(&mut self.driver_features, value),
            _ => {}
        }
    }

    /// A notification that did not go through the ioeventfd (it always does
    /// when the VMM registered them): forward it to the queue's eventfd.
    fn notify(&self, queue: u32) {
        if !self.activated {
            debug!("virtio-mmio: notification of queue {queue} before DRIVER_OK, ignored");
            return;
        }
        match self.queue_events.get(queue as usize) {
            Some(event) => {
                if let Err(e) = event.write(1) {
                    warn!("virtio-mmio: cannot forward a queue notification: {e}");
                }
            }
            None => debug!("virtio-mmio: notification of nonexistent queue {queue}"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        // Bits can only be added, and only in the order the spec gives.
        if value & old != old {
            debug!("virtio-mmio: status {value:#x} would clear bits of {old:#x}, ignored");
            return;
        }
        let added = value & !old;
        if added & STATUS_FAILED != 0 {
            self.status |= STATUS_FAILED;
            return;
        }
        let allowed = match added {
            STATUS_ACKNOWLEDGE => old == 0,
            STATUS_DRIVER => old == STATUS_ACKNOWLEDGE,
            STATUS_FEATURES_OK => old == STATUS_ACKNOWLEDGE | STATUS_DRIVER,
            STATUS_DRIVER_OK => old == STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
            _ => false,
        };
        if !allowed {
            debug!("virtio-mmio: status transition {old:#x} → {value:#x} not allowed, ignored");
            return;
        }
        match added {
            STATUS_FEATURES_OK if !self.features_acceptable() => {
                // FEATURES_OK stays clear: the driver reads it back and fails.
                debug!(
                    "virtio-mmio: driver features {:#x} refused",
                    self.driver_features
                );
            }
            STATUS_DRIVER_OK => {
                self.status = value;
                self.activate();
            }
            _ => self.status = value,
        }
    }

    fn features_acceptable(&self) -> bool {
        let offered = lock(&self.device).avail_features();
        self.driver_features & !offered == 0 && self.driver_features & VIRTIO_F_VERSION_1 != 0
    }

    /// Builds and checks the queues, then hands them to the device.
    fn activate(&mut self) {
        let queues = match self.build_queues() {
            Ok(queues) => queues,
            Err(why) => {
                warn_limited!("virtio-mmio: cannot activate the device: {why}");
                self.interrupt.signal_needs_reset();
                return;
            }
        };
        let mut queue_events = Vec::with_capacity(self.queue_events.len());
        for event in &self.queue_events {
            // Notifications sent before DRIVER_OK mean nothing.
            drain_event(event);
            match event.try_clone() {
                Ok(e) => queue_events.push(e),
                Err(e) => {
                    warn!("virtio-mmio: cannot share a queue event: {e}");
                    self.interrupt.signal_needs_reset();
                    return;
                }
            }
        }
        let activation = Activation {
            mem: self.mem.clone(),
            queues,
            queue_events,
            interrupt: self.interrupt.clone(),
            acked_features: self.driver_features,
        };
        match lock(&self.device).activate(activation) {
            Ok(()) => self.activated = true,
            Err(e) => {
                warn_limited!("virtio-mmio: device activation failed: {e}");
                self.interrupt.signal_needs_reset();
            }
        }
    }

    fn build_queues(&self) -> Result<Vec<Queue>, String> {
        let event_idx = self.driver_features & VIRTIO_RING_F_EVENT_IDX != 0;
        self.queues
            .iter()
            .zip(&self.queue_max)
            .enumerate()
            .map(|(i, (cfg, &max))| {
                if !cfg.ready {
                    return Err(format!("queue {i} is not ready"));
                }
                let mut q = Queue::new(max).map_err(|e| format!("queue {i}: {e}"))?;
                let size = u16::try_from(cfg.size)
                    .map_err(|_| format!("queue {i}: size {} too large", cfg.size))?;
                q.try_set_size(size)
                    .map_err(|e| format!("queue {i}: size {size}: {e}"))?;
                q.try_set_desc_table_address(GuestAddress(cfg.desc))
                    .map_err(|e| format!("queue {i}: descriptor table {:#x}: {e}", cfg.desc))?;
                q.try_set_avail_ring_address(GuestAddress(cfg.driver))
                    .map_err(|e| format!("queue {i}: driver area {:#x}: {e}", cfg.driver))?;
                q.try_set_used_ring_address(GuestAddress(cfg.device))
                    .map_err(|e| format!("queue {i}: device area {:#x}: {e}", cfg.device))?;
                q.set_event_idx(event_idx);
                q.set_ready(true);
                if !q.is_valid(&self.mem) {
                    return Err(format!("queue {i}: rings are not in guest memory"));
                }
                Ok(q)
            })
            .collect()
    }

    fn reset(&mut self) {
        if self.activated {
            // The queues come back; their state is rebuilt from the
            // driver's next configuration, so they are not kept.
            let _ = lock(&self.device).reset();
            self.activated = false;
        }
        self.status = 0;
        self.features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.queue_select = 0;
        self.queues = vec![QueueConfig::default(); self.queue_max.len()];
        self.interrupt.reset();
        for event in &self.queue_events {
            drain_event(event);
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= REG_CONFIG {
            lock(&self.device).read_config(offset - REG_CONFIG, data);
            return;
        }
        let value = if data.len() == 4 && offset.is_multiple_of(4) {
            self.read_register(offset)
        } else {
            debug!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored",
                data.len()
            );
            0
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= REG_CONFIG {
            lock(&self.device).write_config(offset - REG_CONFIG, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset.is_multiple_of(4) => {
                self.write_register(offset, u32::from_le_bytes(bytes))
            }
            _ => debug!(
                "virtio-mmio: {}-byte write at {offset:#x} ignored",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::ActivateError;
    use vm_memory::GuestAddress;

    #[derive(Default)]
    struct Dummy {
        active: bool,
        activations: usize,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            42
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16, 16]
        }
        fn avail_features(&self) -> u64 {
            VIRTIO_F_VERSION_1 | 1
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::virtio::read_config_bytes(&[7, 8, 9], offset, data);
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            assert_eq!(a.queues.len(), 2);
            self.active = true;
            self.activations += 1;
            Ok(())
        }
        fn reset(&mut self) -> Option<Vec<Queue>> {
            self.active = false;
            Some(Vec::new())
        }
    }

    fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let dev = Arc::new(Mutex::new(Dummy::default()));
        let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let t = MmioTransport::new(dev.clone(), mem, Arc::new(Interrupt::new(irq))).unwrap();
        (t, dev)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }
    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    fn negotiate(t: &mut MmioTransport, features_high: u32) {
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(t, REG_DRIVER_FEATURES_SEL, 1);
        w(t, REG_DRIVER_FEATURES, features_high);
        w(
            t,
            REG_STATUS,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
    }

    fn setup_queue(t: &mut MmioTransport, i: u32, size: u32, base: u64) {
        w(t, REG_QUEUE_SEL, i);
        w(t, REG_QUEUE_NUM, size);
        w(t, REG_QUEUE_DESC_LOW, base as u32);
        w(t, REG_QUEUE_DRIVER_LOW, (base + 0x1000) as u32);
        w(t, REG_QUEUE_DEVICE_LOW, (base + 0x2000) as u32);
        w(t, REG_QUEUE_READY, 1);
    }

    #[test]
    fn identifies_itself() {
        let (mut t, _) = setup();
        assert_eq!(r(&mut t, REG_MAGIC), MAGIC);
        assert_eq!(r(&mut t, REG_VERSION), 2);
        assert_eq!(r(&mut t, REG_DEVICE_ID), 42);
        w(&mut t, REG_DEVICE_FEATURES_SEL, 1);
        assert_eq!(r(&mut t, REG_DEVICE_FEATURES), 1);
        w(&mut t, REG_QUEUE_SEL, 1);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 16);
        w(&mut t, REG_QUEUE_SEL, 2);
        assert_eq!(r(&mut t, REG_QUEUE_NUM_MAX), 0);
        let mut b = [0u8; 2];
        t.read(REG_CONFIG + 1, &mut b);
        assert_eq!(b, [8, 9]);
    }

    #[test]
    fn full_negotiation_activates_and_reset_deactivates() {
        let (mut t, dev) = setup();
        negotiate(&mut t, 1);
        assert_eq!(r(&mut t, REG_STATUS), 0xb);
        setup_queue(&mut t, 0, 16, 0x1_0000);
        setup_queue(&mut t, 1, 8, 0x2_0000);
        w(&mut t, REG_STATUS, 0xf);
        assert!(dev.lock().unwrap().active);
        assert_eq!(r(&mut t, REG_STATUS), 0xf);
        w(&mut t, REG_STATUS, 0);
        assert!(!dev.lock().unwrap().active);
        assert_eq!(r(&mut t, REG_STATUS), 0);
    }

    #[test]
    fn version_1_is_required_and_unknown_features_refused() {
        let (mut t, _) = setup();
        negotiate(&mut t, 0); // no VERSION_1
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
        let (mut t, _) = setup();
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE);
        w(&mut t, REG_STATUS, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, REG_DRIVER_FEATURES_SEL, 0);
        w(&mut t, REG_DRIVER_FEATURES, 0x8000_0000); // not offered
        w(&mut t, REG_DRIVER_FEATURES_SEL, 1);
        w(&mut t, REG_DRIVER_FEATURES, 1);
        w(&mut t, REG_STATUS, 0xb);
        assert_eq!(r(&mut t, REG_STATUS) & STATUS_FEATURES_OK, 0);
    }

    #[test]
    fn bad_queues_and_out_of_order_status_need_reset_not_panic() {
        // DRIVER_OK straight away is ignored.
        let (mut t, dev) = setup();
        w(&mut t, REG_STATUS, 0xf);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        // Queue size not a power of two.
        negotiate(&mut t, 1);
        setup_queue(&mut t, 0, 12, 0x1_0000);
        setup_queue(&mut t, 1, 8, 0x2_0000);
        w(&mut t, REG_STATUS, 0xf);
        assert!(!dev.lock().unwrap().active);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, REG_INTERRUPT_STATUS) & 2, 0);
        // Reset clears it; rings outside memory are refused the same way.
        w(&mut t, REG_STATUS, 0);
        assert_eq!(r(&mut t, REG_STATUS), 0);
        negotiate(&mut t, 1);
        setup_queue(&mut t, 0, 16, 0xffff_0000);
        setup_queue(&mut t, 1, 8, 0x2_0000);
        w(&mut t, REG_STATUS, 0xf);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        // A queue left not ready.
        w(&mut t, REG_STATUS, 0);
        negotiate(&mut t, 1);
        setup_queue(&mut t, 0, 16, 0x1_0000);
        w(&mut t, REG_STATUS, 0xf);
        assert_ne!(r(&mut t, REG_STATUS) & STATUS_NEEDS_RESET, 0);
        assert_eq!(dev.lock().unwrap().activations, 0);
        // Odd widths and offsets are ignored.
        t.write(REG_STATUS + 1, &[1]);
        t.write(REG_QUEUE_NOTIFY, &[1, 2]);
        let mut b = [0xffu8; 2];
        t.read(REG_MAGIC, &mut b);
        assert_eq!(b, [0, 0]);
    }
}
