//! virtio-blk from ring 3: the functional test (GET_ID, a pattern written
//! across the whole disk, FLUSH, read back and compared; a read-only disk
//! must refuse writes) and a throughput benchmark.
//!
//! The pattern, which the host checks in the backing file: every 8-byte
//! word `w` of sector `s` holds `PATTERN_SEED ^ (s << 32) ^ w`.

use crate::cmdline::Config;
use crate::virtio::{Device, Queue, ID_BLOCK};
use crate::{dma, mmio};

const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const F_RO: u32 = 1 << 5;
const F_FLUSH: u32 = 1 << 9;
/// Largest request the test issues.
const MAX_IO: u64 = 64 * 1024;
/// Pattern seed ("CORRAL" in the top bytes).
pub const PATTERN_SEED: u64 = 0x434f_5252_414c_0000;

/// One request slot: header, data buffer, status byte.
struct Slot {
    hdr: u64,
    data: u64,
    status: u64,
}

impl Slot {
    fn new(data_len: u64) -> Option<Self> {
        Some(Self {
            hdr: dma::alloc(16, 16)?,
            data: dma::alloc(data_len, 4096)?,
            status: dma::alloc(1, 1)?,
        })
    }

    /// Queues a request (not yet notified); returns its head.
    fn push(&self, q: &mut Queue, kind: u32, sector: u64, len: u32) -> Option<u16> {
        mmio::write::<u32>(self.hdr, kind);
        mmio::write::<u32>(self.hdr + 4, 0);
        mmio::write::<u64>(self.hdr + 8, sector);
        mmio::write::<u8>(self.status, 0xff);
        let device_writes = kind != T_OUT;
        if len == 0 {
            q.push(&[(self.hdr, 16, false), (self.status, 1, true)])
        } else {
            q.push(&[
                (self.hdr, 16, false),
                (self.data, len, device_writes),
                (self.status, 1, true),
            ])
        }
    }

    fn status(&self) -> u8 {
        mmio::read::<u8>(self.status)
    }
}

/// Does one request and waits for it; returns the status (None on timeout).
fn request(q: &mut Queue, slot: &Slot, kind: u32, sector: u64, len: u32) -> Option<u8> {
    slot.push(q, kind, sector, len)?;
    q.kick();
    q.wait_used()?;
    Some(slot.status())
}

fn fill_pattern(buf: &mut [u8], first_sector: u64) {
    for (i, chunk) in buf.chunks_exact_mut(8).enumerate() {
        let sector = first_sector + (i / 64) as u64;
        let word = (i % 64) as u64;
        chunk.copy_from_slice(&(PATTERN_SEED ^ (sector << 32) ^ word).to_le_bytes());
    }
}

fn check_pattern(buf: &[u8], first_sector: u64) -> bool {
    buf.chunks_exact(8).enumerate().all(|(i, chunk)| {
        let sector = first_sector + (i / 64) as u64;
        let word = (i % 64) as u64;
        chunk == (PATTERN_SEED ^ (sector << 32) ^ word).to_le_bytes()
    })
}

struct Disk {
    dev: Device,
    queue: Queue,
    sectors: u64,
    read_only: bool,
}

fn open(base: u64) -> Option<Disk> {
    let dev = Device::init(base, ID_BLOCK, F_RO | F_FLUSH)?;
    let sectors: u64 = dev.config(0);
    let read_only = dev.offered & u64::from(F_RO) != 0;
    let queue = dev.queue(0, 128)?;
    if !dev.go() {
        return None;
    }
    Some(Disk {
        dev,
        queue,
        sectors,
        read_only,
    })
}

/// The functional test over every block device; true if all passed.
pub fn test(windows: &[u64], _config: &Config) -> bool {
    let mut found = 0;
    let mut ok = true;
    for (i, &base) in windows.iter().enumerate() {
        let Some(mut disk) = open(base) else { continue };
        found += 1;
        ok &= test_disk(i, &mut disk);
        disk.dev.reset();
    }
    if found == 0 {
        say!("blk: no virtio-blk device found");
    }
    ok && found > 0
}

fn test_disk(i: usize, d: &mut Disk) -> bool {
    let Some(slot) = Slot::new(MAX_IO) else {
        say!("blk {i}: out of DMA memory");
        return false;
    };
    // GET_ID: 20 bytes, NUL-padded.
    if request(&mut d.queue, &slot, T_GET_ID, 0, 20) != Some(S_OK) {
        say!("blk {i}: GET_ID failed");
        return false;
    }
    let id = dma::bytes(slot.data, 20);
    let id_len = id.iter().position(|b| *b == 0).unwrap_or(20);
    let serial = core::str::from_utf8(&id[..id_len]).unwrap_or("?");
    say!(
        "blk {i}: {} sectors, serial \"{serial}\", {}",
        d.sectors,
        if d.read_only {
            "read-only"
        } else {
            "read-write"
        }
    );
    if d.read_only {
        let st = request(&mut d.queue, &slot, T_OUT, 0, 512);
        if st != Some(S_IOERR) {
            say!("blk {i}: FAILED: a write to the read-only disk got status {st:?}");
            return false;
        }
        let st = request(&mut d.queue, &slot, T_IN, 0, 512);
        say!(
            "blk {i}: read-only disk refused the write (IOERR); reads work: {}",
            st == Some(S_OK)
        );
        return st == Some(S_OK);
    }
    let per = MAX_IO / 512;
    let mut sector = 0;
    while sector < d.sectors {
        let n = per.min(d.sectors - sector);
        fill_pattern(dma::bytes(slot.data, (n * 512) as usize), sector);
        if request(&mut d.queue, &slot, T_OUT, sector, (n * 512) as u32) != Some(S_OK) {
            say!("blk {i}: FAILED: write at sector {sector}");
            return false;
        }
        sector += n;
    }
    if request(&mut d.queue, &slot, T_FLUSH, 0, 0) != Some(S_OK) {
        say!("blk {i}: FAILED: flush");
        return false;
    }
    say!(
        "blk {i}: wrote the pattern over {} sectors and flushed",
        d.sectors
    );
    sector = 0;
    while sector < d.sectors {
        let n = per.min(d.sectors - sector);
        let buf = dma::bytes(slot.data, (n * 512) as usize);
        buf.fill(0);
        if request(&mut d.queue, &slot, T_IN, sector, (n * 512) as u32) != Some(S_OK)
            || !check_pattern(buf, sector)
        {
            say!("blk {i}: FAILED: read back at sector {sector}");
            return false;
        }
        sector += n;
    }
    // Past the end must fail.
    let st = request(&mut d.queue, &slot, T_IN, d.sectors, 512);
    if st != Some(S_IOERR) {
        say!("blk {i}: FAILED: a read past the end got status {st:?}");
        return false;
    }
    say!(
        "blk {i}: read back and verified {} sectors; out-of-range read refused",
        d.sectors
    );
    true
}

/// xorshift64*.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The benchmark on the first block device: for 4 KiB and 64 KiB requests,
/// sequential and random, write then read, `bench_mib` MiB each with
/// `depth` requests in flight. The host times the start/done lines.
pub fn bench(windows: &[u64], config: &Config) -> bool {
    let Some(mut d) = windows.iter().find_map(|&b| open(b)) else {
        say!("blkbench: no virtio-blk device found");
        return false;
    };
    let depth = (config.depth as usize)
        .min(usize::from(d.queue.size()) / 3)
        .max(1);
    let mut slots = [const { None::<Slot> }; 64];
    for s in slots.iter_mut().take(depth) {
        *s = Slot::new(MAX_IO);
    }
    if slots.iter().take(depth).any(Option::is_none) {
        say!("blkbench: out of DMA memory");
        return false;
    }
    let mut ok = true;
    for (size, name) in [(4096u64, "4k"), (65536, "64k")] {
        for random in [false, true] {
            for write in [true, false] {
                if d.read_only && write {
                    continue;
                }
                let label = match (random, write) {
                    (false, true) => "seqwrite",
                    (false, false) => "seqread",
                    (true, true) => "randwrite",
                    (true, false) => "randread",
                };
                ok &= run_pass(
                    &mut d,
                    &slots[..depth],
                    size,
                    random,
                    write,
                    config.bench_mib,
                    label,
                    name,
                );
            }
        }
    }
    ok
}

#[allow(clippy::too_many_arguments)]
fn run_pass(
    d: &mut Disk,
    slots: &[Option<Slot>],
    size: u64,
    random: bool,
    write: bool,
    mib: u64,
    label: &str,
    size_name: &str,
) -> bool {
    let ops = (mib << 20) / size;
    let sectors_per = size / 512;
    let span = (d.sectors / sectors_per).max(1);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ size);
    let kind = if write { T_OUT } else { T_IN };
    let mut next_seq = 0u64;
    let mut issued = 0u64;
    let mut done = 0u64;
    let mut errors = 0u64;
    // head → slot index, for status checks.
    let mut inflight = [usize::MAX; 256];
    say!("bench blk {label} {size_name} start");
    let mut free_slots: [usize; 64] = core::array::from_fn(|i| i);
    let mut nfree = slots.len();
    while done < ops {
        while issued < ops && nfree > 0 {
            let idx = free_slots[nfree - 1];
            let Some(slot) = &slots[idx] else {
                return false;
            };
            let block = if random {
                rng.next() % span
            } else {
                next_seq % span
            };
            next_seq += 1;
            let Some(head) = slot.push(&mut d.queue, kind, block * sectors_per, size as u32) else {
                break;
            };
            nfree -= 1;
            inflight[usize::from(head)] = idx;
            issued += 1;
        }
        d.queue.kick();
        let mut used = d.queue.wait_used();
        if used.is_none() {
            say!("bench blk {label} {size_name}: timeout");
            return false;
        }
        // The completion waited for, then every other one already there.
        while let Some((head, _)) = used {
            let idx = inflight[usize::from(head) % 256];
            if let Some(Some(slot)) = slots.get(idx) {
                if slot.status() != S_OK {
                    errors += 1;
                }
            }
            free_slots[nfree] = idx;
            nfree += 1;
            done += 1;
            used = d.queue.take_used();
        }
    }
    say!(
        "bench blk {label} {size_name} done {ops} ops {} bytes errors {errors}",
        ops * size
    );
    errors == 0
}
