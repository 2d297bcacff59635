//! A virtio 1.x driver core over virtio-mmio (version 2), for ring 3 with
//! interrupts off: devices are found on the command line
//! (`virtio_mmio.device=<size>@<addr>:<irq>`, as Linux finds them), set up
//! as the specification's driver initialisation (3.1.1) says, and driven by
//! polling the used ring.

use core::sync::atomic::{fence, Ordering};

use crate::{dma, mmio, smp};

const MAGIC: u64 = 0x000;
const VERSION: u64 = 0x004;
const DEVICE_ID: u64 = 0x008;
const DEVICE_FEATURES: u64 = 0x010;
const DEVICE_FEATURES_SEL: u64 = 0x014;
const DRIVER_FEATURES: u64 = 0x020;
const DRIVER_FEATURES_SEL: u64 = 0x024;
const QUEUE_SEL: u64 = 0x030;
const QUEUE_NUM_MAX: u64 = 0x034;
const QUEUE_NUM: u64 = 0x038;
const QUEUE_READY: u64 = 0x044;
const QUEUE_NOTIFY: u64 = 0x050;
const STATUS: u64 = 0x070;
const QUEUE_DESC: u64 = 0x080;
const QUEUE_DRIVER: u64 = 0x090;
const QUEUE_DEVICE: u64 = 0x0a0;
/// Device configuration space.
pub const CONFIG: u64 = 0x100;

const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;
const S_NEEDS_RESET: u32 = 0x40;
/// VIRTIO_F_VERSION_1, in the high feature word.
const F_VERSION_1_HIGH: u32 = 1;

/// Descriptor flags.
pub const F_NEXT: u16 = 1;
/// The device writes this buffer.
pub const F_WRITE: u16 = 2;

/// Device IDs.
pub const ID_NET: u32 = 1;
/// Block.
pub const ID_BLOCK: u32 = 2;
/// Console.
pub const ID_CONSOLE: u32 = 3;
/// Socket.
pub const ID_VSOCK: u32 = 19;

/// The `virtio_mmio.device=` windows on the command line, in order.
pub fn windows(cmdline: &str, out: &mut [u64]) -> usize {
    let mut n = 0;
    for word in cmdline.split(' ') {
        let Some(spec) = word.strip_prefix("virtio_mmio.device=") else {
            continue;
        };
        let Some((_, rest)) = spec.split_once('@') else {
            continue;
        };
        let addr = rest.split(':').next().unwrap_or("");
        let parsed = match addr.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => addr.parse().ok(),
        };
        if let (Some(a), Some(slot)) = (parsed, out.get_mut(n)) {
            *slot = a;
            n += 1;
        }
    }
    n
}

/// The device ID at `base`, if a virtio-mmio v2 device is there.
pub fn probe(base: u64) -> Option<u32> {
    if mmio::read::<u32>(base + MAGIC) != 0x7472_6976 || mmio::read::<u32>(base + VERSION) != 2 {
        return None;
    }
    let id = mmio::read::<u32>(base + DEVICE_ID);
    (id != 0).then_some(id)
}

/// A split virtqueue.
pub struct Queue {
    notify: u64,
    index: u32,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    /// Free descriptors, as a stack.
    free: [u16; 256],
    nfree: usize,
    avail_idx: u16,
    last_used: u16,
}

/// A buffer of a request: address, length, device-writable?
pub type Buf = (u64, u32, bool);

impl Queue {
    /// Queue size.
    pub fn size(&self) -> u16 {
        self.size
    }

    /// Makes `bufs` one chain, offers it and notifies; returns its head, or
    /// None if there are not enough free descriptors.
    pub fn submit(&mut self, bufs: &[Buf]) -> Option<u16> {
        self.push(bufs)?;
        let head = self.publish_one()?;
        self.kick();
        Some(head)
    }

    /// Like `submit` but does not notify (batching); call `kick` after.
    pub fn push(&mut self, bufs: &[Buf]) -> Option<u16> {
        if bufs.is_empty() || bufs.len() > self.nfree {
            return None;
        }
        let mut next: Option<u16> = None;
        for (i, (addr, len, write)) in bufs.iter().enumerate().rev() {
            self.nfree -= 1;
            let d = self.free[self.nfree];
            let mut flags = if *write { F_WRITE } else { 0 };
            if next.is_some() {
                flags |= F_NEXT;
            }
            let at = self.desc + u64::from(d) * 16;
            mmio::write::<u64>(at, *addr);
            mmio::write::<u32>(at + 8, *len);
            mmio::write::<u16>(at + 12, flags);
            mmio::write::<u16>(at + 14, next.unwrap_or(0));
            next = Some(d);
            let _ = i;
        }
        let head = next?;
        let slot = u64::from(self.avail_idx % self.size);
        mmio::write::<u16>(self.avail + 4 + slot * 2, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        Some(head)
    }

    fn publish_one(&mut self) -> Option<u16> {
        fence(Ordering::SeqCst);
        mmio::write::<u16>(self.avail + 2, self.avail_idx);
        fence(Ordering::SeqCst);
        let slot = u64::from(self.avail_idx.wrapping_sub(1) % self.size);
        Some(mmio::read::<u16>(self.avail + 4 + slot * 2))
    }

    /// Publishes everything pushed and notifies the device.
    pub fn kick(&mut self) {
        fence(Ordering::SeqCst);
        mmio::write::<u16>(self.avail + 2, self.avail_idx);
        fence(Ordering::SeqCst);
        mmio::write::<u32>(self.notify, self.index);
    }

    /// The next used entry, if any: (head, length written). Its chain's
    /// descriptors become free again.
    pub fn take_used(&mut self) -> Option<(u16, u32)> {
        fence(Ordering::SeqCst);
        let idx = mmio::read::<u16>(self.used + 2);
        if idx == self.last_used {
            return None;
        }
        let slot = u64::from(self.last_used % self.size);
        let id = mmio::read::<u32>(self.used + 4 + slot * 8) as u16;
        let len = mmio::read::<u32>(self.used + 8 + slot * 8);
        self.last_used = self.last_used.wrapping_add(1);
        // Free the chain.
        let mut d = id;
        for _ in 0..self.size {
            if self.nfree >= self.free.len() || d >= self.size {
                break;
            }
            self.free[self.nfree] = d;
            self.nfree += 1;
            let at = self.desc + u64::from(d) * 16;
            if mmio::read::<u16>(at + 12) & F_NEXT == 0 {
                break;
            }
            d = mmio::read::<u16>(at + 14);
        }
        Some((id, len))
    }

    /// Waits (bounded) for the next used entry.
    pub fn wait_used(&mut self) -> Option<(u16, u32)> {
        let start = smp::rdtsc();
        loop {
            if let Some(u) = self.take_used() {
                return Some(u);
            }
            if smp::rdtsc().wrapping_sub(start) > 20_000_000_000 {
                return None;
            }
            core::hint::spin_loop();
        }
    }
}

/// An initialised device.
pub struct Device {
    /// Its MMIO window.
    pub base: u64,
    /// Features the device offered (both words).
    pub offered: u64,
}

impl Device {
    /// If the device at `base` is a `want_id`, resets it and negotiates
    /// `wanted_low` low-word features (and VERSION_1); None otherwise (other
    /// devices are not touched) or if the device refuses.
    pub fn init(base: u64, want_id: u32, wanted_low: u32) -> Option<Self> {
        let id = probe(base)?;
        if id != want_id {
            return None;
        }
        mmio::write::<u32>(base + STATUS, 0);
        mmio::write::<u32>(base + STATUS, S_ACKNOWLEDGE);
        mmio::write::<u32>(base + STATUS, S_ACKNOWLEDGE | S_DRIVER);
        mmio::write::<u32>(base + DEVICE_FEATURES_SEL, 0);
        let low = mmio::read::<u32>(base + DEVICE_FEATURES);
        mmio::write::<u32>(base + DEVICE_FEATURES_SEL, 1);
        let high = mmio::read::<u32>(base + DEVICE_FEATURES);
        if high & F_VERSION_1_HIGH == 0 {
            return None;
        }
        mmio::write::<u32>(base + DRIVER_FEATURES_SEL, 0);
        mmio::write::<u32>(base + DRIVER_FEATURES, low & wanted_low);
        mmio::write::<u32>(base + DRIVER_FEATURES_SEL, 1);
        mmio::write::<u32>(base + DRIVER_FEATURES, F_VERSION_1_HIGH);
        mmio::write::<u32>(base + STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
        if mmio::read::<u32>(base + STATUS) & S_FEATURES_OK == 0 {
            return None;
        }
        Some(Self {
            base,
            offered: (u64::from(high) << 32) | u64::from(low),
        })
    }

    /// Sets up queue `index` with at most `want` entries.
    pub fn queue(&self, index: u32, want: u16) -> Option<Queue> {
        mmio::write::<u32>(self.base + QUEUE_SEL, index);
        let max = mmio::read::<u32>(self.base + QUEUE_NUM_MAX);
        if max == 0 {
            return None;
        }
        let mut size = want.min(256).min(max.min(256) as u16);
        while !size.is_power_of_two() {
            size -= 1;
        }
        let n = u64::from(size);
        let desc = dma::alloc(16 * n, 4096)?;
        let avail = dma::alloc(6 + 2 * n, 4096)?;
        let used = dma::alloc(6 + 8 * n, 4096)?;
        mmio::write::<u32>(self.base + QUEUE_NUM, u32::from(size));
        for (reg, addr) in [
            (QUEUE_DESC, desc),
            (QUEUE_DRIVER, avail),
            (QUEUE_DEVICE, used),
        ] {
            mmio::write::<u32>(self.base + reg, addr as u32);
            mmio::write::<u32>(self.base + reg + 4, (addr >> 32) as u32);
        }
        mmio::write::<u32>(self.base + QUEUE_READY, 1);
        let mut q = Queue {
            notify: self.base + QUEUE_NOTIFY,
            index,
            size,
            desc,
            avail,
            used,
            free: [0; 256],
            nfree: 0,
            avail_idx: 0,
            last_used: 0,
        };
        for d in (0..size).rev() {
            q.free[q.nfree] = d;
            q.nfree += 1;
        }
        Some(q)
    }

    /// Sets DRIVER_OK; false if the device then reports it needs a reset.
    pub fn go(&self) -> bool {
        mmio::write::<u32>(
            self.base + STATUS,
            S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK,
        );
        mmio::read::<u32>(self.base + STATUS) & S_NEEDS_RESET == 0
    }

    /// Reads a config-space value.
    pub fn config<T: Copy>(&self, offset: u64) -> T {
        mmio::read::<T>(self.base + CONFIG + offset)
    }

    /// Resets the device.
    pub fn reset(&self) {
        mmio::write::<u32>(self.base + STATUS, 0);
    }
}
