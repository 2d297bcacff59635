//! One virtio-blk request: parse the descriptor chain the guest gave, do the
//! I/O directly between the disk file and guest memory, and write the
//! status byte.
//!
//! Layout (virtio 1.2, 5.2.6; any split of it across descriptors is fine):
//! device-readable `{type: le32, reserved: le32, sector: le64}`, then data
//! (readable for OUT, writable for IN and GET_ID), then one writable status
//! byte. Everything is checked: a chain that is too short, that puts
//! readable after writable descriptors, that points outside guest memory,
//! or asks for sectors beyond the disk gets IOERR; an unknown type gets
//! UNSUPP; a chain with no room for a status byte cannot be answered and
//! gets used length 0.

use std::fs::File;

use tracing::debug;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress};

use super::positioned::FileAt;
use super::SERIAL_LEN;
use virtio_bindings::virtio_blk;

use crate::virtio::GuestMemoryMmap;

/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;
/// Request types.
pub const VIRTIO_BLK_T_IN: u32 = virtio_blk::VIRTIO_BLK_T_IN;
/// Write.
pub const VIRTIO_BLK_T_OUT: u32 = virtio_blk::VIRTIO_BLK_T_OUT;
/// Flush.
pub const VIRTIO_BLK_T_FLUSH: u32 = virtio_blk::VIRTIO_BLK_T_FLUSH;
/// Device ID string.
pub const VIRTIO_BLK_T_GET_ID: u32 = virtio_blk::VIRTIO_BLK_T_GET_ID;
/// Status: success.
pub const VIRTIO_BLK_S_OK: u8 = virtio_blk::VIRTIO_BLK_S_OK as u8;
/// Status: I/O error (or a bad request).
pub const VIRTIO_BLK_S_IOERR: u8 = virtio_blk::VIRTIO_BLK_S_IOERR as u8;
/// Status: unsupported request type.
pub const VIRTIO_BLK_S_UNSUPP: u8 = virtio_blk::VIRTIO_BLK_S_UNSUPP as u8;

const HEADER_LEN: usize = 16;
/// Most descriptors a request may have (the largest queue's worth).
const MAX_SEGMENTS: usize = 1024;

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Completed with status OK.
    Ok,
    /// Completed with IOERR (bad request or failed I/O).
    IoErr,
    /// Completed with UNSUPP.
    Unsupported,
    /// No status byte to answer in.
    Unanswerable,
}

/// Requests completed, by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// OK.
    pub ok: u64,
    /// IOERR.
    pub io_err: u64,
    /// UNSUPP.
    pub unsupported: u64,
    /// Not answerable.
    pub unanswerable: u64,
}

impl Stats {
    pub(crate) fn record(&mut self, outcome: Outcome) {
        match outcome {
            Outcome::Ok => self.ok += 1,
            Outcome::IoErr => self.io_err += 1,
            Outcome::Unsupported => self.unsupported += 1,
            Outcome::Unanswerable => self.unanswerable += 1,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    addr: GuestAddress,
    len: u64,
}

/// Why a request got IOERR (for the debug log).
#[derive(Debug, thiserror::Error)]
enum BadRequest {
    #[error("header shorter than 16 bytes")]
    ShortHeader,
    #[error("device-readable descriptor after a writable one")]
    ReadableAfterWritable,
    #[error("more than {MAX_SEGMENTS} descriptors")]
    TooManySegments,
    #[error("data length {0} is not a multiple of 512")]
    Unaligned(u64),
    #[error("{len} bytes at sector {sector} go past the end of the disk")]
    OutOfRange { sector: u64, len: u64 },
    #[error("write to a read-only disk")]
    ReadOnly,
    #[error("buffer outside guest memory")]
    Memory,
    #[error("disk I/O failed: {0}")]
    Io(std::io::Error),
}

/// The disk behind the device.
pub struct Disk {
    file: File,
    sectors: u64,
    serial: [u8; SERIAL_LEN],
    read_only: bool,
    cache: super::DiskCache,
}

impl Disk {
    /// A disk of `sectors` sectors backed by `file`.
    pub fn new(file: File, sectors: u64, serial: [u8; SERIAL_LEN], read_only: bool) -> Self {
        Self {
            file,
            sectors,
            serial,
            read_only,
            cache: super::DiskCache::Writeback,
        }
    }

    /// The same disk serving FLUSH as `cache` says.
    pub fn with_cache(mut self, cache: super::DiskCache) -> Self {
        self.cache = cache;
        self
    }

    /// Capacity in sectors.
    pub fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Executes the request in `chain`; returns the bytes written into the
    /// chain (data and status) and how it ended.
    pub fn execute(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> (u32, Outcome) {
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        let mut layout_error = None;
        for desc in chain {
            if readable.len() + writable.len() >= MAX_SEGMENTS {
                layout_error = Some(BadRequest::TooManySegments);
                break;
            }
            let seg = Segment {
                addr: desc.addr(),
                len: u64::from(desc.len()),
            };
            if desc.is_write_only() {
                writable.push(seg);
            } else if writable.is_empty() {
                readable.push(seg);
            } else {
                layout_error = Some(BadRequest::ReadableAfterWritable);
            }
        }
        // The status byte is the last writable byte.
        let Some(status_at) = take_last_byte(&mut writable) else {
            debug!("virtio-blk: request without a status byte");
            return (0, Outcome::Unanswerable);
        };
        let result = match layout_error {
            Some(e) => Err(e),
            None => self.run(mem, &mut readable, &writable),
        };
        let (status, data_written, outcome) = match result {
            Ok((status, written)) => {
                let outcome = if status == VIRTIO_BLK_S_OK {
                    Outcome::Ok
                } else {
                    Outcome::Unsupported
                };
                (status, written, outcome)
            }
            Err(e) => {
                debug!("virtio-blk: bad request: {e}");
                (VIRTIO_BLK_S_IOERR, 0, Outcome::IoErr)
            }
        };
        if mem.write_obj(status, status_at).is_err() {
            return (0, Outcome::Unanswerable);
        }
        let used = data_written.saturating_add(1);
        (u32::try_from(used).unwrap_or(u32::MAX), outcome)
    }

    /// Returns the status and the data bytes written to the guest.
    fn run(
        &mut self,
        mem: &GuestMemoryMmap,
        readable: &mut Vec<Segment>,
        writable: &[Segment],
    ) -> Result<(u8, u64), BadRequest> {
        let mut header = [0u8; HEADER_LEN];
        take_bytes(mem, readable, &mut header)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector_bytes = [0u8; 8];
        sector_bytes.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector_bytes);
        match kind {
            VIRTIO_BLK_T_IN => {
                let len = self.check_range(sector, writable)?;
                let mut disk = FileAt::new(&self.file, sector * SECTOR_SIZE);
                for seg in writable {
                    mem.read_exact_volatile_from(seg.addr, &mut disk, seg.len as usize)
                        .map_err(|_| BadRequest::Memory)?;
                }
                Ok((VIRTIO_BLK_S_OK, len))
            }
            VIRTIO_BLK_T_OUT => {
                if self.read_only {
                    return Err(BadRequest::ReadOnly);
                }
                self.check_range(sector, readable)?;
                let mut disk = FileAt::new(&self.file, sector * SECTOR_SIZE);
                for seg in readable.iter() {
                    mem.write_all_volatile_to(seg.addr, &mut disk, seg.len as usize)
                        .map_err(|_| BadRequest::Memory)?;
                }
                Ok((VIRTIO_BLK_S_OK, 0))
            }
            VIRTIO_BLK_T_FLUSH => {
                if !self.read_only && self.cache == super::DiskCache::Writeback {
                    self.file.sync_data().map_err(BadRequest::Io)?;
                }
                Ok((VIRTIO_BLK_S_OK, 0))
            }
            VIRTIO_BLK_T_GET_ID => {
                let mut left = &self.serial[..];
                let mut written = 0;
                for seg in writable {
                    if left.is_empty() {
                        break;
                    }
                    let n = left.len().min(seg.len as usize);
                    mem.write_slice(&left[..n], seg.addr)
                        .map_err(|_| BadRequest::Memory)?;
                    left = &left[n..];
                    written += n as u64;
                }
                Ok((VIRTIO_BLK_S_OK, written))
            }
            other => {
                debug!("virtio-blk: unsupported request type {other}");
                Ok((VIRTIO_BLK_S_UNSUPP, 0))
            }
        }
    }

    /// Checks that the data segments cover whole sectors within the disk;
    /// returns their total length.
    fn check_range(&self, sector: u64, data: &[Segment]) -> Result<u64, BadRequest> {
        let len = data
            .iter()
            .try_fold(0u64, |sum, s| sum.checked_add(s.len))
            .ok_or(BadRequest::OutOfRange {
                sector,
                len: u64::MAX,
            })?;
        if len % SECTOR_SIZE != 0 {
            return Err(BadRequest::Unaligned(len));
        }
        let end = sector.checked_add(len / SECTOR_SIZE);
        if end.is_none_or(|end| end > self.sectors) {
            return Err(BadRequest::OutOfRange { sector, len });
        }
        Ok(len)
    }
}

/// Removes the last byte of the last non-empty segment; returns its address.
fn take_last_byte(segments: &mut Vec<Segment>) -> Option<GuestAddress> {
    while let Some(last) = segments.last_mut() {
        if last.len == 0 {
            segments.pop();
            continue;
        }
        last.len -= 1;
        let at = last.addr.checked_add(last.len);
        if last.len == 0 {
            segments.pop();
        }
        return at;
    }
    None
}

/// Fills `out` from the front of `segments`, consuming them.
fn take_bytes(
    mem: &GuestMemoryMmap,
    segments: &mut Vec<Segment>,
    out: &mut [u8],
) -> Result<(), BadRequest> {
    let mut filled = 0;
    while filled < out.len() {
        if segments.is_empty() {
            return Err(BadRequest::ShortHeader);
        }
        let seg = &mut segments[0];
        let n = (out.len() - filled).min(seg.len as usize);
        mem.read_slice(&mut out[filled..filled + n], seg.addr)
            .map_err(|_| BadRequest::Memory)?;
        filled += n;
        seg.len -= n as u64;
        seg.addr = seg.addr.checked_add(n as u64).ok_or(BadRequest::Memory)?;
        if seg.len == 0 {
            segments.remove(0);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom, Write};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};
    use vm_memory::GuestAddress;

    const F_NEXT: u16 = 1;
    const F_WRITE: u16 = 2;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
    }

    fn disk(sectors: u64, read_only: bool) -> (Disk, File) {
        let dir = std::env::temp_dir().join(format!("corral-blk-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!(
            "disk-{sectors}-{read_only}-{:?}",
            std::thread::current().id()
        ));
        let mut f = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        f.write_all(&vec![0xeeu8; (sectors * SECTOR_SIZE) as usize])
            .unwrap();
        let mut serial = [0u8; SERIAL_LEN];
        serial[..6].copy_from_slice(b"disk-7");
        (
            Disk::new(f.try_clone().unwrap(), sectors, serial, read_only),
            f,
        )
    }

    fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
    }

    /// Builds one chain of `descs` (next indexes filled in) and runs it.
    fn run(m: &GuestMemoryMmap, d: &mut Disk, descs: &[RawDescriptor]) -> (u32, Outcome) {
        let vq = MockSplitQueue::new(m, 16);
        vq.build_desc_chain(descs).unwrap();
        let mut q: Queue = vq.create_queue().unwrap();
        let chain = q.iter(m).unwrap().next().unwrap();
        d.execute(m, chain)
    }

    fn header(m: &GuestMemoryMmap, at: u64, kind: u32, sector: u64) {
        m.write_obj(kind, GuestAddress(at)).unwrap();
        m.write_obj(0u32, GuestAddress(at + 4)).unwrap();
        m.write_obj(sector, GuestAddress(at + 8)).unwrap();
    }

    #[test]
    fn write_then_read_round_trips() {
        let m = mem();
        let (mut d, mut f) = disk(16, false);
        header(&m, 0x10_0000, VIRTIO_BLK_T_OUT, 2);
        m.write_slice(&[0x5au8; 1024], GuestAddress(0x20_0000))
            .unwrap();
        let out = [
            desc(0x10_0000, 16, F_NEXT),
            desc(0x20_0000, 1024, F_NEXT),
            desc(0x30_0000, 1, F_WRITE),
        ];
        assert_eq!(run(&m, &mut d, &out), (1, Outcome::Ok));
        assert_eq!(
            m.read_obj::<u8>(GuestAddress(0x30_0000)).unwrap(),
            VIRTIO_BLK_S_OK
        );
        let mut on_disk = vec![0u8; 1024];
        f.seek(SeekFrom::Start(1024)).unwrap();
        f.read_exact(&mut on_disk).unwrap();
        assert!(on_disk.iter().all(|b| *b == 0x5a));

        header(&m, 0x10_0000, VIRTIO_BLK_T_IN, 2);
        // The data may be split, and the status share a descriptor with it.
        let inp = [
            desc(0x10_0000, 16, F_NEXT),
            desc(0x40_0000, 512, F_NEXT | F_WRITE),
            desc(0x50_0000, 513, F_WRITE),
        ];
        assert_eq!(run(&m, &mut d, &inp), (1025, Outcome::Ok));
        let mut back = vec![0u8; 512];
        m.read_slice(&mut back, GuestAddress(0x50_0000)).unwrap();
        assert!(back.iter().all(|b| *b == 0x5a));
        assert_eq!(m.read_obj::<u8>(GuestAddress(0x50_0000 + 512)).unwrap(), 0);
    }

    #[test]
    fn bad_requests_get_error_statuses() {
        let m = mem();
        let (mut d, _f) = disk(16, false);
        let status = GuestAddress(0x30_0000);
        let cases: &[(u32, u64, u32, Outcome)] = &[
            (VIRTIO_BLK_T_IN, 15, 1024, Outcome::IoErr), // past the end
            (VIRTIO_BLK_T_IN, u64::MAX, 512, Outcome::IoErr), // overflow
            (VIRTIO_BLK_T_IN, 0, 100, Outcome::IoErr),   // not whole sectors
            (99, 0, 512, Outcome::Unsupported),
        ];
        for &(kind, sector, len, expect) in cases {
            header(&m, 0x10_0000, kind, sector);
            let chain = [
                desc(0x10_0000, 16, F_NEXT),
                desc(0x40_0000, len, F_NEXT | F_WRITE),
                desc(status.0, 1, F_WRITE),
            ];
            assert_eq!(run(&m, &mut d, &chain).1, expect, "{kind} {sector} {len}");
            let want = if expect == Outcome::Unsupported {
                VIRTIO_BLK_S_UNSUPP
            } else {
                VIRTIO_BLK_S_IOERR
            };
            assert_eq!(m.read_obj::<u8>(status).unwrap(), want);
        }
        // Short header, readable after writable, data outside memory.
        header(&m, 0x10_0000, VIRTIO_BLK_T_IN, 0);
        assert_eq!(
            run(
                &m,
                &mut d,
                &[desc(0x10_0000, 8, F_NEXT), desc(status.0, 1, F_WRITE)]
            )
            .1,
            Outcome::IoErr
        );
        let mixed = [
            desc(0x10_0000, 16, F_NEXT),
            desc(0x40_0000, 512, F_NEXT | F_WRITE),
            desc(0x40_0000, 512, F_NEXT),
            desc(status.0, 1, F_WRITE),
        ];
        assert_eq!(run(&m, &mut d, &mixed).1, Outcome::IoErr);
        let outside = [
            desc(0x10_0000, 16, F_NEXT),
            desc(0xff_ff00, 512, F_NEXT | F_WRITE),
            desc(status.0, 1, F_WRITE),
        ];
        assert_eq!(run(&m, &mut d, &outside).1, Outcome::IoErr);
        // No writable byte at all: nothing can be answered.
        assert_eq!(
            run(&m, &mut d, &[desc(0x10_0000, 16, 0)]),
            (0, Outcome::Unanswerable)
        );
    }

    #[test]
    fn read_only_refuses_writes_and_get_id_answers() {
        let m = mem();
        let (mut d, _f) = disk(4, true);
        header(&m, 0x10_0000, VIRTIO_BLK_T_OUT, 0);
        let w = [
            desc(0x10_0000, 16, F_NEXT),
            desc(0x20_0000, 512, F_NEXT),
            desc(0x30_0000, 1, F_WRITE),
        ];
        assert_eq!(run(&m, &mut d, &w).1, Outcome::IoErr);
        header(&m, 0x10_0000, VIRTIO_BLK_T_GET_ID, 0);
        let id = [
            desc(0x10_0000, 16, F_NEXT),
            desc(0x20_0000, 20, F_NEXT | F_WRITE),
            desc(0x30_0000, 1, F_WRITE),
        ];
        assert_eq!(run(&m, &mut d, &id), (21, Outcome::Ok));
        let mut serial = [0u8; 6];
        m.read_slice(&mut serial, GuestAddress(0x20_0000)).unwrap();
        assert_eq!(&serial, b"disk-7");
    }
}
