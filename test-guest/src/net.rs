//! virtio-net from ring 3, talking to the host's own network stack on the
//! other end of the tap: ARP for the host's address, then ICMP echo
//! requests whose payloads the host echoes back and we compare. The
//! benchmark sends and receives raw frames of the local experimental
//! EtherType 0x88b5, which the host counts and generates with packet
//! sockets.

use crate::blk::Rng;
use crate::cmdline::Config;
use crate::virtio::{Device, Queue, ID_NET};
use crate::{dma, smp};

const F_MAC: u32 = 1 << 5;
const HDR: usize = 12;
const BUF: u32 = 2048;
const RX_BUFS: usize = 64;
const ETH_ARP: u16 = 0x0806;
const ETH_IP: u16 = 0x0800;
/// EtherType of benchmark frames.
pub const ETH_BENCH: u16 = 0x88b5;
const PINGS: u16 = 50;
const PING_PAYLOAD: usize = 1000;

struct Nic {
    dev: Device,
    rx: Queue,
    tx: Queue,
    mac: [u8; 6],
    rx_bufs: [u64; RX_BUFS],
    tx_buf: u64,
}

fn open(base: u64) -> Option<Nic> {
    let dev = Device::init(base, ID_NET, F_MAC)?;
    let mut mac = [0u8; 6];
    if dev.offered & u64::from(F_MAC) != 0 {
        for (i, b) in mac.iter_mut().enumerate() {
            *b = dev.config(i as u64);
        }
    } else {
        mac = [0x02, 0, 0, 0, 0, 0x42];
    }
    let mut rx = dev.queue(0, RX_BUFS as u16)?;
    let tx = dev.queue(1, 64)?;
    let mut rx_bufs = [0u64; RX_BUFS];
    for b in rx_bufs.iter_mut().take(usize::from(rx.size())) {
        *b = dma::alloc(u64::from(BUF), 64)?;
    }
    let tx_buf = dma::alloc(u64::from(BUF) * 64, 64)?;
    if !dev.go() {
        return None;
    }
    // Post every RX buffer; the head of a one-descriptor chain is its index
    // in the table, which we map back to the buffer.
    for &b in rx_bufs.iter().take(usize::from(rx.size())) {
        rx.push(&[(b, BUF, true)])?;
    }
    rx.kick();
    Some(Nic {
        dev,
        rx,
        tx,
        mac,
        rx_bufs,
        tx_buf,
    })
}

impl Nic {
    /// Sends one frame (Ethernet header onwards); waits until the device
    /// took it when `wait`.
    fn send(&mut self, frame: &[u8], slot: usize, wait: bool) -> bool {
        let buf = self.tx_buf + (slot as u64 % 64) * u64::from(BUF);
        let bytes = dma::bytes(buf, HDR + frame.len());
        bytes[..HDR].fill(0);
        bytes[HDR..].copy_from_slice(frame);
        if self
            .tx
            .push(&[(buf, (HDR + frame.len()) as u32, false)])
            .is_none()
        {
            return false;
        }
        self.tx.kick();
        if wait {
            return self.tx.wait_used().is_some();
        }
        true
    }

    /// Reclaims sent TX buffers; returns how many.
    fn reap_tx(&mut self) -> usize {
        let mut n = 0;
        while self.tx.take_used().is_some() {
            n += 1;
        }
        n
    }

    /// The next received frame (Ethernet header onwards), polled until
    /// `timeout_cycles`; the buffer is reposted by `done`.
    fn recv(&mut self, timeout_cycles: u64) -> Option<(u16, &'static [u8])> {
        let start = smp::rdtsc();
        loop {
            if let Some((head, len)) = self.rx.take_used() {
                let buf = self.rx_bufs[usize::from(head) % RX_BUFS];
                let len = (len as usize).clamp(HDR, BUF as usize);
                return Some((head, &dma::bytes(buf, len)[HDR..]));
            }
            if smp::rdtsc().wrapping_sub(start) > timeout_cycles {
                return None;
            }
            core::hint::spin_loop();
        }
    }

    fn repost(&mut self, head: u16) {
        let buf = self.rx_bufs[usize::from(head) % RX_BUFS];
        let _ = self.rx.push(&[(buf, BUF, true)]);
        self.rx.kick();
    }
}

fn ethertype(f: &[u8]) -> u16 {
    if f.len() < 14 {
        return 0;
    }
    u16::from_be_bytes([f[12], f[13]])
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum = 0u32;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from(c[0]) << 8
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn arp_request(mac: [u8; 6], me: [u8; 4], them: [u8; 4]) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[..6].fill(0xff);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_ARP.to_be_bytes());
    f[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&me);
    f[38..42].copy_from_slice(&them);
    f
}

fn ping(mac: [u8; 6], dst: [u8; 6], me: [u8; 4], them: [u8; 4], seq: u16, out: &mut [u8]) -> usize {
    let len = 14 + 20 + 8 + PING_PAYLOAD;
    let f = &mut out[..len];
    f[..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_IP.to_be_bytes());
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&((20 + 8 + PING_PAYLOAD) as u16).to_be_bytes());
    ip[4..6].copy_from_slice(&seq.to_be_bytes());
    ip[12..16].copy_from_slice(&me);
    ip[16..20].copy_from_slice(&them);
    let c = checksum(ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let icmp = &mut f[34..];
    icmp[..8].copy_from_slice(&[8, 0, 0, 0, 0x43, 0x52, 0, 0]);
    icmp[6..8].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in icmp[8..].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ (seq as u8);
    }
    let c = checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    len
}

/// ARP then ICMP echo with payload checks; true if all worked.
pub fn test(windows: &[u64], config: &Config) -> bool {
    let Some(mut nic) = windows.iter().find_map(|&b| open(b)) else {
        say!("net: no virtio-net device found");
        return false;
    };
    let m = nic.mac;
    say!(
        "net: MAC {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5]
    );
    let (me, them) = (config.guest_ip, config.host_ip);
    let timeout = 10_000_000_000;
    let mut host_mac = None;
    for _ in 0..5 {
        if !nic.send(&arp_request(m, me, them), 0, true) {
            break;
        }
        while let Some((head, f)) = nic.recv(timeout / 5) {
            let reply = ethertype(f) == ETH_ARP
                && f.len() >= 42
                && f[20..22] == [0, 2]
                && f[28..32] == them;
            let mut mac = [0u8; 6];
            if reply {
                mac.copy_from_slice(&f[22..28]);
            }
            nic.repost(head);
            if reply {
                host_mac = Some(mac);
                break;
            }
        }
        if host_mac.is_some() {
            break;
        }
    }
    let Some(hm) = host_mac else {
        say!(
            "net: FAILED: no ARP reply from {}.{}.{}.{}",
            them[0],
            them[1],
            them[2],
            them[3]
        );
        return false;
    };
    say!(
        "net: ARP: {}.{}.{}.{} is at {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        them[0],
        them[1],
        them[2],
        them[3],
        hm[0],
        hm[1],
        hm[2],
        hm[3],
        hm[4],
        hm[5]
    );
    let mut frame = [0u8; 1600];
    let mut answered = 0;
    for seq in 1..=PINGS {
        let len = ping(m, hm, me, them, seq, &mut frame);
        nic.send(&frame[..len], 1, true);
        while let Some((head, f)) = nic.recv(timeout) {
            let echo = ethertype(f) == ETH_IP
                && f.len() >= len
                && f[23] == 1
                && f[34] == 0
                && u16::from_be_bytes([f[40], f[41]]) == seq;
            let same = echo && f[42..len] == frame[42..len];
            nic.repost(head);
            if echo {
                if same {
                    answered += 1;
                }
                break;
            }
        }
    }
    say!("net: {answered} of {PINGS} pings with {PING_PAYLOAD}-byte payloads echoed intact");
    nic.dev.reset();
    answered == PINGS
}

/// Frame rates: `frames` frames guest → host, then as many host → guest
/// (until a frame whose first payload byte is 0xff). The host times the
/// start/done lines and counts with a packet socket.
pub fn bench(windows: &[u64], config: &Config) -> bool {
    let Some(mut nic) = windows.iter().find_map(|&b| open(b)) else {
        say!("netbench: no virtio-net device found");
        return false;
    };
    let mut frame = [0u8; 1514];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&nic.mac);
    frame[12..14].copy_from_slice(&ETH_BENCH.to_be_bytes());
    let mut rng = Rng(7);
    for b in frame[14..].iter_mut() {
        *b = rng.next() as u8 & 0x7f;
    }
    say!("bench net tx start");
    let mut in_flight = 0usize;
    for i in 0..config.frames {
        while in_flight >= 63 {
            in_flight -= nic.reap_tx();
        }
        frame[14..22].copy_from_slice(&i.to_le_bytes());
        nic.send(&frame, i as usize, false);
        in_flight += 1;
    }
    while in_flight > 0 {
        in_flight -= nic.reap_tx();
    }
    say!(
        "bench net tx done {} frames {} bytes",
        config.frames,
        config.frames * 1514
    );
    say!("bench net rx ready");
    let mut frames = 0u64;
    let mut bytes = 0u64;
    let mut started = false;
    loop {
        let Some((head, f)) = nic.recv(30_000_000_000) else {
            say!("bench net rx: timeout after {frames} frames");
            return false;
        };
        let (is_bench, last, len) = (ethertype(f) == ETH_BENCH, f.get(14) == Some(&0xff), f.len());
        nic.repost(head);
        if !is_bench {
            continue;
        }
        if !started {
            started = true;
            say!("bench net rx start");
        }
        if last {
            break;
        }
        frames += 1;
        bytes += len as u64;
    }
    say!("bench net rx done {frames} frames {bytes} bytes");
    true
}
