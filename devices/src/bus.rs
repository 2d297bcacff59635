//! The device bus: maps guest port-I/O or MMIO address ranges to devices.
//!
//! A VM has two buses, one for port I/O and one for MMIO. Both are built
//! before the first vCPU runs and are then shared, read-only, by every vCPU
//! thread; each device sits behind its own mutex, so two vCPUs touching
//! different devices never contend.
//!
//! Everything the guest sends here is untrusted: an access that is not wholly
//! inside one device's range is not dispatched (the caller treats it as an
//! access to nothing), and a device gets the offset into its own range, never
//! a raw guest address.

use std::sync::{Arc, Mutex, MutexGuard};

use thiserror::Error;

/// A device reachable through a [`Bus`].
pub trait BusDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` into the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` into the device's range.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device shared between the bus and whoever else drives it (for example
/// the I/O thread that feeds console input).
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Why a device could not be added to a bus.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BusError {
    /// The range has zero length or wraps around the address space.
    #[error("invalid bus range: base {base:#x}, length {len:#x}")]
    InvalidRange {
        /// First address of the range.
        base: u64,
        /// Length of the range.
        len: u64,
    },
    /// The range overlaps a device already on the bus.
    #[error("bus range {base:#x}+{len:#x} overlaps the device at {other_base:#x}+{other_len:#x}")]
    Overlap {
        /// First address of the new range.
        base: u64,
        /// Length of the new range.
        len: u64,
        /// First address of the existing range.
        other_base: u64,
        /// Length of the existing range.
        other_len: u64,
    },
}

struct BusRange {
    base: u64,
    len: u64,
    device: SharedDevice,
}

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Default)]
pub struct Bus {
    /// Sorted by `base`, non-overlapping.
    ranges: Vec<BusRange>,
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `[base, base + len)` with `device`.
    pub fn insert(&mut self, device: SharedDevice, base: u64, len: u64) -> Result<(), BusError> {
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(BusError::InvalidRange { base, len });
        }
        let end = base + (len - 1);
        if let Some(other) = self
            .ranges
            .iter()
            .find(|r| base <= r.base + (r.len - 1) && r.base <= end)
        {
            return Err(BusError::Overlap {
                base,
                len,
                other_base: other.base,
                other_len: other.len,
            });
        }
        let at = self.ranges.partition_point(|r| r.base < base);
        self.ranges.insert(at, BusRange { base, len, device });
        Ok(())
    }

    /// The device whose range holds all of `[addr, addr + size)`, and the
    /// offset of `addr` in that range.
    fn find(&self, addr: u64, size: usize) -> Option<(&BusRange, u64)> {
        let idx = self
            .ranges
            .partition_point(|r| r.base <= addr)
            .checked_sub(1)?;
        let range = &self.ranges[idx];
        let offset = addr - range.base;
        let size = u64::try_from(size).ok()?;
        (size <= range.len && offset <= range.len - size).then_some((range, offset))
    }

    /// Dispatches a guest read. Returns false, leaving `data` untouched, when
    /// no device serves the whole access.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((range, offset)) => {
                lock(&range.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a guest write. Returns false when no device serves the
    /// whole access.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr, data.len()) {
            Some((range, offset)) => {
                lock(&range.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device (or any mutex), recovering from a poisoned lock: a device
/// that panicked once must not take every later access of the guest down
/// with it.
pub fn lock<T: ?Sized>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Remembers the last access so tests can check offsets.
    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    fn recorder() -> Arc<Mutex<Recorder>> {
        Arc::new(Mutex::new(Recorder::default()))
    }

    #[test]
    fn dispatches_with_offsets() {
        let mut bus = Bus::new();
        let a = recorder();
        let b = recorder();
        bus.insert(a.clone(), 0x1000, 0x10).unwrap();
        bus.insert(b.clone(), 0x10, 8).unwrap();

        let mut data = [0u8; 2];
        assert!(bus.read(0x1004, &mut data));
        assert_eq!(data, [4, 4]);
        assert!(bus.write(0x17, &[9]));
        assert_eq!(b.lock().unwrap().last_write, Some((7, vec![9])));
        assert!(a.lock().unwrap().last_write.is_none());
    }

    #[test]
    fn accesses_outside_or_straddling_ranges_are_not_dispatched() {
        let mut bus = Bus::new();
        let a = recorder();
        bus.insert(a.clone(), 0x1000, 0x10).unwrap();
        let mut data = [0xaau8; 4];
        assert!(!bus.read(0xfff, &mut data));
        assert!(!bus.read(0x100e, &mut data), "straddles the end");
        assert!(!bus.read(0x1010, &mut data));
        assert!(!bus.read(u64::MAX - 1, &mut data));
        assert_eq!(data, [0xaa; 4]);
        assert!(!bus.write(0x100d, &[1, 2, 3, 4]));
        assert!(a.lock().unwrap().last_write.is_none());
    }

    #[test]
    fn rejects_overlaps_and_empty_ranges() {
        let mut bus = Bus::new();
        bus.insert(recorder(), 0x100, 0x100).unwrap();
        assert!(matches!(
            bus.insert(recorder(), 0x1ff, 1),
            Err(BusError::Overlap {
                other_base: 0x100,
                ..
            })
        ));
        assert!(matches!(
            bus.insert(recorder(), 0x0, 0x101),
            Err(BusError::Overlap { .. })
        ));
        assert_eq!(
            bus.insert(recorder(), 0x10, 0),
            Err(BusError::InvalidRange { base: 0x10, len: 0 })
        );
        assert!(bus.insert(recorder(), u64::MAX, 2).is_err());
        bus.insert(recorder(), u64::MAX, 1).unwrap();
        bus.insert(recorder(), 0x200, 1).unwrap();
    }
}
