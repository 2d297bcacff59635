//! virtio-blk on a raw file (or block device): IN, OUT, FLUSH, GET_ID;
//! read-only disks offer VIRTIO_BLK_F_RO and fail writes with IOERR.
//!
//! - this file: configuration, the device and its `VirtioDevice` face;
//! - `request`: parsing and executing one request (no threads, no KVM:
//!   unit- and fuzz-testable against `virtio-queue`'s mock driver);
//! - `event_handler`: the worker-thread side (queue notifications).

mod event_handler;
mod positioned;
pub mod request;

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::ratelimit::warn_limited;
use virtio_queue::Queue;

use super::Lifecycle;
use super::{
    complete_chains, read_config_bytes, ActivateError, Activation, VirtioDevice,
    VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC,
};
pub use event_handler::BlockHandler;
use request::{Disk, SECTOR_SIZE};

/// virtio device ID of a block device.
pub const VIRTIO_ID_BLOCK: u32 = virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
/// The device is read-only.
pub const VIRTIO_BLK_F_RO: u64 = 1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_RO;
/// The device supports FLUSH.
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH;
/// Entries per queue.
pub const QUEUE_SIZE: u16 = 256;
/// Length of the GET_ID answer.
pub const SERIAL_LEN: usize = 20;

/// A disk to attach.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Backing file or block device.
    pub path: PathBuf,
    /// Refuse writes.
    pub read_only: bool,
    /// What GET_ID returns (at most 20 bytes); the file name if None.
    pub serial: Option<String>,
    /// What a guest's FLUSH does.
    pub cache: DiskCache,
}

/// How the guest's FLUSH requests are served (QEMU's `cache=` names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DiskCache {
    /// Writes go to the host's page cache; a FLUSH makes them durable
    /// (`fdatasync` of the backing file) before it completes.
    #[default]
    Writeback,
    /// FLUSH completes at once without syncing: faster, and data the guest
    /// believes durable is lost if the host crashes. For throwaway disks.
    Unsafe,
}

/// A disk could not be attached.
#[derive(Debug, Error)]
pub enum VirtioBlockError {
    /// The backing file cannot be opened.
    #[error("cannot open disk {path}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The disk is smaller than one sector.
    #[error("disk {path} is {len} bytes, smaller than one 512-byte sector")]
    TooSmall {
        /// The file.
        path: PathBuf,
        /// Its size.
        len: u64,
    },
    /// The serial is too long.
    #[error("disk serial {serial:?} is longer than {SERIAL_LEN} bytes")]
    SerialTooLong {
        /// The serial.
        serial: String,
    },
    /// An eventfd could not be created.
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
}

/// The virtio-blk device.
pub struct Block {
    disk: Disk,
    read_only: bool,
    config: [u8; 8],
    features: u64,
    lifecycle: Lifecycle,
    /// Requests completed, by outcome (for tests and diagnostics).
    stats: request::Stats,
}

impl Block {
    /// Opens the disk described by `config`.
    pub fn new(config: &DiskConfig) -> Result<Self, VirtioBlockError> {
        let open_err = |source| VirtioBlockError::Open {
            path: config.path.clone(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!config.read_only)
            .open(&config.path)
            .map_err(open_err)?;
        let len = disk_len(&file).map_err(open_err)?;
        if len < SECTOR_SIZE {
            return Err(VirtioBlockError::TooSmall {
                path: config.path.clone(),
                len,
            });
        }
        let serial = serial_bytes(config)?;
        let sectors = len / SECTOR_SIZE;
        let mut features = VIRTIO_F_VERSION_1
            | VIRTIO_BLK_F_FLUSH
            | VIRTIO_RING_F_EVENT_IDX
            | VIRTIO_RING_F_INDIRECT_DESC;
        if config.read_only {
            features |= VIRTIO_BLK_F_RO;
        }
        Ok(Self {
            disk: Disk::new(file, sectors, serial, config.read_only).with_cache(config.cache),
            read_only: config.read_only,
            config: sectors.to_le_bytes(),
            features,
            lifecycle: Lifecycle::new().map_err(VirtioBlockError::EventFd)?,
            stats: request::Stats::default(),
        })
    }

    /// Capacity in 512-byte sectors.
    pub fn sectors(&self) -> u64 {
        self.disk.sectors()
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Counts of completed requests.
    pub fn stats(&self) -> request::Stats {
        self.stats
    }

    /// Completes every available request; signals the driver when needed.
    pub(crate) fn process_queue(&mut self) {
        let Some(active) = self.lifecycle.active.as_mut() else {
            return;
        };
        let (disk, stats) = (&mut self.disk, &mut self.stats);
        let mem = &active.mem;
        let result = complete_chains(&mut active.queues[0], mem, |chain| {
            let (len, outcome) = disk.execute(mem, chain);
            stats.record(outcome);
            len
        });
        match result {
            Ok(true) => active.interrupt.signal_used_queue(),
            Ok(false) => {}
            Err(e) => {
                warn_limited!("virtio-blk: queue unusable ({e}); the device needs a reset");
                active.interrupt.signal_needs_reset();
            }
        }
    }
}

fn disk_len(file: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    // Works for block devices too, whose metadata length is 0.
    let mut f = file;
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(len)
}

fn serial_bytes(config: &DiskConfig) -> Result<[u8; SERIAL_LEN], VirtioBlockError> {
    let serial = match &config.serial {
        Some(s) => s.clone(),
        None => file_name(&config.path),
    };
    let mut out = [0u8; SERIAL_LEN];
    if config.serial.is_some() && serial.len() > SERIAL_LEN {
        return Err(VirtioBlockError::SerialTooLong { serial });
    }
    let n = serial.len().min(SERIAL_LEN);
    out[..n].copy_from_slice(&serial.as_bytes()[..n]);
    Ok(out)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.lifecycle.activate(a, 1)
    }

    fn reset(&mut self) -> Option<Vec<Queue>> {
        self.lifecycle.reset("virtio-blk")
    }
}
