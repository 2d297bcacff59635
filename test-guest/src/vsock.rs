//! virtio-vsock from ring 3: a small stream implementation (REQUEST /
//! RESPONSE / RW / CREDIT_UPDATE / SHUTDOWN / RST, credit-based flow
//! control both ways) and the workload the host tests drive:
//!
//! 1. a connection to a host port nobody listens on must be reset;
//! 2. `streams` guest → host connections to port 6000 (an echo server on
//!    the host) each send `stream_mib` MiB of generated data and check that
//!    the echo's CRC-32 matches what was sent;
//! 3. the guest listens on port 5000 and echoes `streams` host → guest
//!    connections until the host closes them (the host checks the CRC).

use crate::blk::Rng;
use crate::cmdline::Config;
use crate::virtio::{Device, Queue, ID_VSOCK};
use crate::{dma, mmio, smp};

const HDR: u64 = 44;
const RX_N: usize = 32;
const RX_DATA: u32 = 64 * 1024;
const TX_N: usize = 32;
const TX_DATA: u32 = 64 * 1024;
const MAX_CONNS: usize = 8;
/// Our receive buffer per connection (advertised buf_alloc).
const BUF_ALLOC: u32 = 256 * 1024;
const TYPE_STREAM: u16 = 1;
const OP_REQUEST: u16 = 1;
const OP_RESPONSE: u16 = 2;
const OP_RST: u16 = 3;
const OP_SHUTDOWN: u16 = 4;
const OP_RW: u16 = 5;
const OP_CREDIT_UPDATE: u16 = 6;
const OP_CREDIT_REQUEST: u16 = 7;
const HOST_CID: u64 = 2;
/// Host port of the echo server the host test runs.
pub const ECHO_PORT: u32 = 6000;
/// Guest port the host test connects to.
pub const LISTEN_PORT: u32 = 5000;
/// A host port with nothing behind it.
pub const REFUSED_PORT: u32 = 7777;

/// CRC-32 (IEEE) lookup tables for slicing-by-8, built at compile time.
const CRC_TABLES: [[u32; 256]; 8] = crc_tables();

const fn crc_tables() -> [[u32; 256]; 8] {
    let mut t = [[0u32; 256]; 8];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = (c >> 1) ^ (0xedb8_8320 & (c & 1).wrapping_neg());
            k += 1;
        }
        t[0][i] = c;
        i += 1;
    }
    let mut s = 1;
    while s < 8 {
        let mut i = 0;
        while i < 256 {
            let prev = t[s - 1][i];
            t[s][i] = (prev >> 8) ^ t[0][(prev & 0xff) as usize];
            i += 1;
        }
        s += 1;
    }
    t
}

/// CRC-32 (IEEE), slicing-by-8 (the guest must not be what limits the
/// stream figures).
pub fn crc32_update(crc: u32, data: &[u8]) -> u32 {
    let t = &CRC_TABLES;
    let mut c = !crc;
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        let lo = c ^ u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]);
        let hi = u32::from_le_bytes([ch[4], ch[5], ch[6], ch[7]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][(hi & 0xff) as usize]
            ^ t[2][((hi >> 8) & 0xff) as usize]
            ^ t[1][((hi >> 16) & 0xff) as usize]
            ^ t[0][(hi >> 24) as usize];
    }
    for &b in chunks.remainder() {
        c = (c >> 8) ^ t[0][((c ^ u32::from(b)) & 0xff) as usize];
    }
    !c
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Free,
    Connecting,
    Open,
    Closed,
    Refused,
}

struct Conn {
    state: State,
    local: u32,
    peer: u32,
    echo: bool,
    // Receiving.
    received: u64,
    rx_crc: u32,
    fwd_cnt: u32,
    fwd_cnt_told: u32,
    // Sending.
    tx_cnt: u32,
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    to_send: u64,
    sent: u64,
    tx_crc: u32,
    rng: Rng,
    // Echo buffer (ring) for echo connections.
    ebuf: u64,
    ehead: usize,
    elen: usize,
    peer_done_sending: bool,
    shut_sent: bool,
}

impl Conn {
    fn new() -> Self {
        Self {
            state: State::Free,
            local: 0,
            peer: 0,
            echo: false,
            received: 0,
            rx_crc: 0,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            tx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            to_send: 0,
            sent: 0,
            tx_crc: 0,
            rng: Rng(1),
            ebuf: 0,
            ehead: 0,
            elen: 0,
            peer_done_sending: false,
            shut_sent: false,
        }
    }

    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }
}

struct Vsock {
    dev: Device,
    rx: Queue,
    tx: Queue,
    cid: u64,
    /// RX head → buffer.
    rx_of_head: [u64; 256],
    tx_slots: [u64; TX_N],
    tx_free: [usize; TX_N],
    ntx_free: usize,
    /// TX head → slot.
    tx_of_head: [usize; 256],
    conns: [Conn; MAX_CONNS],
    next_port: u32,
}

fn open(base: u64) -> Option<Vsock> {
    let dev = Device::init(base, ID_VSOCK, 0)?;
    let cid: u64 = dev.config(0);
    let mut rx = dev.queue(0, (RX_N * 2) as u16)?;
    let tx = dev.queue(1, (TX_N * 2) as u16)?;
    let _event = dev.queue(2, 4)?;
    let mut rx_bufs = [0u64; RX_N];
    for b in rx_bufs.iter_mut() {
        *b = dma::alloc(HDR + u64::from(RX_DATA), 64)?;
    }
    let mut tx_slots = [0u64; TX_N];
    for s in tx_slots.iter_mut() {
        *s = dma::alloc(HDR + u64::from(TX_DATA), 64)?;
    }
    if !dev.go() {
        return None;
    }
    let mut rx_of_head = [0u64; 256];
    for &b in &rx_bufs {
        let head = rx.push(&[(b, HDR as u32, true), (b + HDR, RX_DATA, true)])?;
        rx_of_head[usize::from(head)] = b;
    }
    rx.kick();
    let mut conns: [Conn; MAX_CONNS] = core::array::from_fn(|_| Conn::new());
    for c in conns.iter_mut() {
        c.ebuf = dma::alloc(u64::from(BUF_ALLOC), 64)?;
    }
    Some(Vsock {
        dev,
        rx,
        tx,
        cid,
        rx_of_head,
        tx_slots,
        tx_free: core::array::from_fn(|i| i),
        ntx_free: TX_N,
        tx_of_head: [usize::MAX; 256],
        conns,
        next_port: 40000,
    })
}

fn put_header(at: u64, h: &Header) {
    mmio::write::<u64>(at, h.src_cid);
    mmio::write::<u64>(at + 8, h.dst_cid);
    mmio::write::<u32>(at + 16, h.src_port);
    mmio::write::<u32>(at + 20, h.dst_port);
    mmio::write::<u32>(at + 24, h.len);
    mmio::write::<u16>(at + 28, TYPE_STREAM);
    mmio::write::<u16>(at + 30, h.op);
    mmio::write::<u32>(at + 32, h.flags);
    mmio::write::<u32>(at + 36, BUF_ALLOC);
    mmio::write::<u32>(at + 40, h.fwd_cnt);
}

struct Header {
    src_cid: u64,
    dst_cid: u64,
    src_port: u32,
    dst_port: u32,
    len: u32,
    op: u16,
    flags: u32,
    buf_alloc: u32,
    fwd_cnt: u32,
}

fn get_header(at: u64) -> Header {
    Header {
        src_cid: mmio::read(at),
        dst_cid: mmio::read(at + 8),
        src_port: mmio::read(at + 16),
        dst_port: mmio::read(at + 20),
        len: mmio::read(at + 24),
        op: mmio::read(at + 30),
        flags: mmio::read(at + 32),
        buf_alloc: mmio::read(at + 36),
        fwd_cnt: mmio::read(at + 40),
    }
}

impl Vsock {
    fn reap_tx(&mut self) {
        while let Some((head, _)) = self.tx.take_used() {
            let slot = self.tx_of_head[usize::from(head)];
            if slot < TX_N {
                self.tx_free[self.ntx_free] = slot;
                self.ntx_free += 1;
                self.tx_of_head[usize::from(head)] = usize::MAX;
            }
        }
    }

    /// Sends a packet for connection `i`; `fill` writes `len` data bytes.
    fn send(
        &mut self,
        i: usize,
        op: u16,
        flags: u32,
        len: u32,
        fill: impl FnOnce(&mut [u8]),
    ) -> bool {
        self.reap_tx();
        if self.ntx_free == 0 {
            return false;
        }
        let slot = self.tx_free[self.ntx_free - 1];
        let at = self.tx_slots[slot];
        let c = &mut self.conns[i];
        c.fwd_cnt_told = c.fwd_cnt;
        let h = Header {
            src_cid: self.cid,
            dst_cid: HOST_CID,
            src_port: c.local,
            dst_port: c.peer,
            len,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt: c.fwd_cnt,
        };
        put_header(at, &h);
        if len > 0 {
            fill(dma::bytes(at + HDR, len as usize));
        }
        let head = if len > 0 {
            self.tx
                .push(&[(at, HDR as u32, false), (at + HDR, len, false)])
        } else {
            self.tx.push(&[(at, HDR as u32, false)])
        };
        let Some(head) = head else { return false };
        self.ntx_free -= 1;
        self.tx_of_head[usize::from(head)] = slot;
        self.tx.kick();
        true
    }

    fn find(&self, local: u32, peer: u32) -> Option<usize> {
        self.conns
            .iter()
            .position(|c| c.state != State::Free && c.local == local && c.peer == peer)
    }

    fn alloc(&mut self) -> Option<usize> {
        self.conns.iter().position(|c| c.state == State::Free)
    }

    fn connect(&mut self, port: u32, bytes: u64, seed: u64) -> Option<usize> {
        let i = self.alloc()?;
        let local = self.next_port;
        self.next_port += 1;
        let ebuf = self.conns[i].ebuf;
        self.conns[i] = Conn::new();
        let c = &mut self.conns[i];
        c.ebuf = ebuf;
        c.state = State::Connecting;
        c.local = local;
        c.peer = port;
        c.to_send = bytes;
        c.rng = Rng(seed | 1);
        self.send(i, OP_REQUEST, 0, 0, |_| {}).then_some(i)
    }

    /// Handles every received packet; returns how many.
    fn poll_rx(&mut self) -> usize {
        let mut n = 0;
        while let Some((head, _)) = self.rx.take_used() {
            n += 1;
            let buf = self.rx_of_head[usize::from(head)];
            if buf == 0 {
                continue;
            }
            self.handle(buf);
            if let Some(h) = self
                .rx
                .push(&[(buf, HDR as u32, true), (buf + HDR, RX_DATA, true)])
            {
                self.rx_of_head[usize::from(h)] = buf;
            }
        }
        if n > 0 {
            self.rx.kick();
        }
        n
    }

    fn handle(&mut self, buf: u64) {
        let h = get_header(buf);
        if h.src_cid != HOST_CID || h.dst_cid != self.cid {
            return;
        }
        let found = self.find(h.dst_port, h.src_port);
        if h.op == OP_REQUEST {
            if h.dst_port == LISTEN_PORT && found.is_none() {
                if let Some(i) = self.alloc() {
                    let ebuf = self.conns[i].ebuf;
                    self.conns[i] = Conn::new();
                    let c = &mut self.conns[i];
                    c.ebuf = ebuf;
                    c.state = State::Open;
                    c.echo = true;
                    c.local = h.dst_port;
                    c.peer = h.src_port;
                    c.peer_buf_alloc = h.buf_alloc;
                    c.peer_fwd_cnt = h.fwd_cnt;
                    self.send(i, OP_RESPONSE, 0, 0, |_| {});
                    return;
                }
            }
            return;
        }
        let Some(i) = found else { return };
        let c = &mut self.conns[i];
        c.peer_buf_alloc = h.buf_alloc;
        c.peer_fwd_cnt = h.fwd_cnt;
        match h.op {
            OP_RESPONSE if c.state == State::Connecting => c.state = State::Open,
            OP_RST => {
                c.state = if c.state == State::Connecting {
                    State::Refused
                } else {
                    State::Closed
                };
            }
            OP_RW => {
                let data = dma::bytes(buf + HDR, (h.len.min(RX_DATA)) as usize);
                c.received += data.len() as u64;
                c.rx_crc = crc32_update(c.rx_crc, data);
                if c.echo {
                    // Into the echo ring; freed (fwd_cnt) as it is sent back.
                    let cap = BUF_ALLOC as usize;
                    let ring = dma::bytes(c.ebuf, cap);
                    let n = data.len().min(cap - c.elen);
                    let tail = (c.ehead + c.elen) % cap;
                    let first = n.min(cap - tail);
                    ring[tail..tail + first].copy_from_slice(&data[..first]);
                    ring[..n - first].copy_from_slice(&data[first..n]);
                    c.elen += n;
                } else {
                    c.fwd_cnt = c.fwd_cnt.wrapping_add(data.len() as u32);
                }
            }
            OP_SHUTDOWN if h.flags & 2 != 0 => c.peer_done_sending = true,
            OP_CREDIT_REQUEST => {
                self.send(i, OP_CREDIT_UPDATE, 0, 0, |_| {});
            }
            _ => {}
        }
    }

    /// Sends what each open connection may send now; returns whether
    /// anything was sent.
    fn pump_tx(&mut self) -> bool {
        let mut any = false;
        for i in 0..MAX_CONNS {
            let c = &self.conns[i];
            if c.state != State::Open {
                continue;
            }
            let (credit, echo) = (c.credit(), c.echo);
            if echo {
                let n = (c.elen as u32).min(credit).min(TX_DATA);
                if n > 0 {
                    let (ebuf, ehead) = (c.ebuf, c.ehead);
                    let ok = self.send(i, OP_RW, 0, n, |out| {
                        let cap = BUF_ALLOC as usize;
                        let ring = dma::bytes(ebuf, cap);
                        let first = out.len().min(cap - ehead);
                        out[..first].copy_from_slice(&ring[ehead..ehead + first]);
                        let rest = out.len() - first;
                        out[first..].copy_from_slice(&ring[..rest]);
                    });
                    if ok {
                        let c = &mut self.conns[i];
                        c.ehead = (c.ehead + n as usize) % BUF_ALLOC as usize;
                        c.elen -= n as usize;
                        c.tx_cnt = c.tx_cnt.wrapping_add(n);
                        c.fwd_cnt = c.fwd_cnt.wrapping_add(n);
                        any = true;
                    }
                }
                let c = &self.conns[i];
                let finished = c.peer_done_sending && c.elen == 0 && !c.shut_sent;
                if finished && self.send(i, OP_SHUTDOWN, 3, 0, |_| {}) {
                    self.conns[i].shut_sent = true;
                }
            } else {
                let left = c.to_send - c.sent;
                let n = (left.min(u64::from(credit)).min(u64::from(TX_DATA))) as u32;
                if n > 0 {
                    let mut rng = Rng(c.rng.0);
                    let mut crc = c.tx_crc;
                    let ok = self.send(i, OP_RW, 0, n, |out| {
                        for chunk in out.chunks_mut(8) {
                            let v = rng.next().to_le_bytes();
                            chunk.copy_from_slice(&v[..chunk.len()]);
                        }
                        crc = crc32_update(crc, out);
                    });
                    if ok {
                        let c = &mut self.conns[i];
                        c.rng = rng;
                        c.tx_crc = crc;
                        c.sent += u64::from(n);
                        c.tx_cnt = c.tx_cnt.wrapping_add(n);
                        any = true;
                    }
                }
            }
            let c = &self.conns[i];
            let update_due = c.fwd_cnt.wrapping_sub(c.fwd_cnt_told) >= BUF_ALLOC / 4;
            if update_due {
                self.send(i, OP_CREDIT_UPDATE, 0, 0, |_| {});
            }
        }
        any
    }

    /// Runs the loop until `done` or a timeout; false on timeout.
    fn run_until(&mut self, mut done: impl FnMut(&mut Self) -> bool) -> bool {
        let mut last_progress = smp::rdtsc();
        loop {
            let got = self.poll_rx();
            let sent = self.pump_tx();
            if got > 0 || sent {
                last_progress = smp::rdtsc();
            }
            if done(self) {
                return true;
            }
            if smp::rdtsc().wrapping_sub(last_progress) > 60_000_000_000 {
                return false;
            }
            // Interrupts stay off: no InterruptStatus reads (each would be
            // an exit to the VMM) in this loop.
        }
    }
}

/// The vsock workload; true if every check passed.
pub fn test(windows: &[u64], config: &Config) -> bool {
    let Some(mut v) = windows.iter().find_map(|&b| open(b)) else {
        say!("vsock: no virtio-vsock device found");
        return false;
    };
    say!("vsock: guest CID {}", v.cid);

    // 1. Refused.
    let Some(r) = v.connect(REFUSED_PORT, 0, 1) else {
        return false;
    };
    if !v.run_until(|v| v.conns[r].state != State::Connecting) || v.conns[r].state != State::Refused
    {
        say!("vsock: FAILED: connecting to host port {REFUSED_PORT} did not get a reset");
        return false;
    }
    v.conns[r].state = State::Free;
    say!("vsock: connection to host port {REFUSED_PORT} refused with RST");

    // 2. Guest → host echo streams.
    let bytes = config.stream_mib << 20;
    let streams = (config.streams as usize).min(MAX_CONNS / 2);
    let mut ids = [usize::MAX; MAX_CONNS];
    say!("bench vsock g2h start");
    for (k, id) in ids.iter_mut().enumerate().take(streams) {
        match v.connect(ECHO_PORT, bytes, 0x1234 + k as u64) {
            Some(i) => *id = i,
            None => return false,
        }
    }
    let ok = v.run_until(|v| {
        ids[..streams].iter().all(|&i| {
            let c = &v.conns[i];
            c.state == State::Refused || c.state == State::Closed || c.received >= bytes
        })
    });
    say!("bench vsock g2h done {} bytes", bytes * streams as u64 * 2);
    let mut all = ok;
    for (k, &i) in ids[..streams].iter().enumerate() {
        let c = &v.conns[i];
        let good = c.state == State::Open && c.received == bytes && c.rx_crc == c.tx_crc;
        say!(
            "vsock: guest→host stream {k}: sent {} bytes, echoed {} bytes, crc32 {:08x}/{:08x} {}",
            c.sent,
            c.received,
            c.tx_crc,
            c.rx_crc,
            if good { "match" } else { "MISMATCH" }
        );
        all &= good;
    }
    for &i in &ids[..streams] {
        v.send(i, OP_SHUTDOWN, 3, 0, |_| {});
    }
    v.run_until(|v| {
        ids[..streams]
            .iter()
            .all(|&i| v.conns[i].state == State::Closed)
    });
    for &i in &ids[..streams] {
        v.conns[i].state = State::Free;
    }

    // 3. Host → guest echo streams.
    say!("vsock: listening on port {LISTEN_PORT} for {streams} connections");
    let mut served = 0;
    let ok = v.run_until(|v| {
        for c in v.conns.iter_mut() {
            if c.echo && c.state == State::Closed {
                say!(
                    "vsock: host→guest stream from port {}: echoed {} bytes, crc32 {:08x}",
                    c.peer,
                    c.received,
                    c.rx_crc
                );
                c.state = State::Free;
                served += 1;
            }
        }
        served >= streams
    });
    say!("vsock: served {served} host→guest streams");
    v.dev.reset();
    all && ok && served == streams
}

/// The benchmark is the same exchange (the host times the markers).
pub fn bench(windows: &[u64], config: &Config) -> bool {
    test(windows, config)
}
