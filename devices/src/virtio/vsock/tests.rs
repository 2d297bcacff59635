//! Unit tests of the device against a driver written here: a hostile RX
//! buffer, a control-packet flood, and host connections that never finish.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::muxer::{OP_REQUEST, OP_RESPONSE, OP_RST, WANT_IN};
use super::*;
use crate::virtio::{Activation, GuestMemoryMmap, Interrupt, VirtioDevice};

const QSIZE: u16 = 16;
const GUEST_CID: u64 = 3;
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// One split queue driven by the test: rings a page apart, chains written
/// at the next free descriptor slots, avail entries modulo the size.
struct Driver {
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl Driver {
    fn new(m: &GuestMemoryMmap, base: u64) -> Self {
        for page in 0..3 {
            m.write_slice(&[0u8; 0x1000], GuestAddress(base + page * 0x1000))
                .unwrap();
        }
        Self {
            desc: base,
            avail: base + 0x1000,
            used: base + 0x2000,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    fn queue(&self) -> Queue {
        let mut q = Queue::new(QSIZE).unwrap();
        q.try_set_size(QSIZE).unwrap();
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_ready(true);
        q
    }

    /// Makes a chain of `(addr, len, flags)` available; returns its head.
    fn push(&mut self, m: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let slot = self.next_desc;
            self.next_desc = (self.next_desc + 1) % QSIZE;
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | F_NEXT };
            let at = self.desc + u64::from(slot) * 16;
            m.write_obj(addr, GuestAddress(at)).unwrap();
            m.write_obj(len, GuestAddress(at + 8)).unwrap();
            m.write_obj(flags, GuestAddress(at + 12)).unwrap();
            m.write_obj(self.next_desc, GuestAddress(at + 14)).unwrap();
        }
        let slot = u64::from(self.avail_idx % QSIZE);
        m.write_obj(head, GuestAddress(self.avail + 4 + slot * 2))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        m.write_obj(self.avail_idx, GuestAddress(self.avail + 2))
            .unwrap();
        head
    }

    /// Used entries written since the last call: (head, length).
    fn take_used(&mut self, m: &GuestMemoryMmap) -> Vec<(u32, u32)> {
        let idx: u16 = m.read_obj(GuestAddress(self.used + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let slot = u64::from(self.used_seen % QSIZE);
            let id: u32 = m.read_obj(GuestAddress(self.used + 4 + slot * 8)).unwrap();
            let len: u32 = m
                .read_obj(GuestAddress(self.used + 4 + slot * 8 + 4))
                .unwrap();
            out.push((id, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }
}

/// A guest → host packet header.
fn header(src_port: u32, dst_port: u32, op: u16, len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    h.extend_from_slice(&GUEST_CID.to_le_bytes());
    h.extend_from_slice(&HOST_CID.to_le_bytes());
    h.extend_from_slice(&src_port.to_le_bytes());
    h.extend_from_slice(&dst_port.to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&1u16.to_le_bytes()); // stream
    h.extend_from_slice(&op.to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes()); // flags
    h.extend_from_slice(&(64u32 * 1024).to_le_bytes()); // buf_alloc
    h.extend_from_slice(&0u32.to_le_bytes()); // fwd_cnt
    h
}

/// (op, src_port) of the packet the device wrote at `addr`.
fn received(m: &GuestMemoryMmap, addr: u64) -> (u16, u32) {
    let op: u16 = m.read_obj(GuestAddress(addr + 30)).unwrap();
    let src_port: u32 = m.read_obj(GuestAddress(addr + 16)).unwrap();
    (op, src_port)
}

struct Rig {
    m: GuestMemoryMmap,
    dev: Vsock,
    rx: Driver,
    tx: Driver,
    _dir: std::path::PathBuf,
    uds: std::path::PathBuf,
}

fn rig(name: &str) -> Rig {
    let m = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap();
    let dir = std::env::temp_dir().join(format!("corral-vsock-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    let mut dev = Vsock::new(&VsockConfig {
        cid: GUEST_CID as u32,
        uds_path: uds.clone(),
    })
    .unwrap();
    let rx = Driver::new(&m, 0x1_0000);
    let tx = Driver::new(&m, 0x2_0000);
    let ev = Driver::new(&m, 0x3_0000);
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    dev.activate(Activation {
        mem: m.clone(),
        queues: vec![rx.queue(), tx.queue(), ev.queue()],
        queue_events: (0..3).map(|_| EventFd::new(0).unwrap()).collect(),
        interrupt: Arc::new(Interrupt::new(irq)),
        acked_features: VIRTIO_F_VERSION_1,
    })
    .unwrap();
    Rig {
        m,
        dev,
        rx,
        tx,
        _dir: dir,
        uds,
    }
}

/// Runs `f` on another thread; fails the test if it does not return in
/// time (the old muxer looped for ever here).
fn within<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, wait) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(f());
    });
    wait.recv_timeout(Duration::from_secs(10))
        .unwrap_or_else(|_| panic!("{what} did not return within 10 s"))
}

/// A host connection to guest port 1024, accepted by the guest; returns the
/// host's socket and the connection's host port.
fn established(r: &mut Rig, first_bytes: &[u8]) -> (UnixStream, u32) {
    let mut host = UnixStream::connect(&r.uds).unwrap();
    let mut line = b"CONNECT 1024\n".to_vec();
    line.extend_from_slice(first_bytes);
    host.write_all(&line).unwrap();
    r.dev.muxer().accept();
    let (interest, _) = r.dev.muxer().take_interest();
    let token = interest[0].token;
    r.dev.muxer().socket_ready(token, WANT_IN);
    r.rx.push(&r.m, &[(0x10_0000, 44 + 256, F_WRITE)]);
    r.dev.process_rx();
    let (op, port) = received(&r.m, 0x10_0000);
    assert_eq!(op, OP_REQUEST);
    r.m.write_slice(&header(1024, port, OP_RESPONSE, 0), GuestAddress(0x40_0000))
        .unwrap();
    r.tx.push(&r.m, &[(0x40_0000, 44, 0)]);
    r.dev.process_tx();
    let mut ok = [0u8; 64];
    let n = host.read(&mut ok).unwrap();
    assert_eq!(&ok[..n], format!("OK {port}\n").as_bytes());
    r.rx.take_used(&r.m);
    (host, port)
}

#[test]
fn an_rx_buffer_without_room_for_data_is_returned_not_spun_on() {
    let mut r = rig("noroom");
    let (_host, _port) = established(&mut r, b"hello");
    // Header descriptor, then a zero-length data descriptor.
    let head =
        r.rx.push(&r.m, &[(0x11_0000, 44, F_WRITE), (0x12_0000, 0, F_WRITE)]);
    let r = within("process_rx", move || {
        r.dev.process_rx();
        r
    });
    let mut r = r;
    assert_eq!(r.rx.take_used(&r.m), vec![(u32::from(head), 0)]);
    assert_eq!(r.dev.muxer().stats().rx_no_room, 1);
    // The data waits for a usable buffer, then arrives whole.
    r.rx.push(&r.m, &[(0x13_0000, 44 + 64, F_WRITE)]);
    r.dev.process_rx();
    let used = r.rx.take_used(&r.m);
    assert_eq!(used.len(), 1);
    assert_eq!(used[0].1, 44 + 5);
    let mut data = [0u8; 5];
    r.m.read_slice(&mut data, GuestAddress(0x13_0000 + 44))
        .unwrap();
    assert_eq!(&data, b"hello");
}

#[test]
fn a_guest_that_takes_no_control_packets_cannot_grow_the_backlog() {
    let mut r = rig("flood");
    // Requests to host ports nobody listens on: one reset owed for each,
    // and the guest posts no RX buffers.
    let mut port = 2000u32;
    let mut request = |r: &mut Rig| {
        let at = 0x50_0000 + u64::from(port % 4096) * 64;
        r.m.write_slice(&header(port, 9, OP_REQUEST, 0), GuestAddress(at))
            .unwrap();
        r.tx.push(&r.m, &[(at, 44, 0)]);
        port += 1;
    };
    let mut sent = 0;
    let mut paused_at = None;
    for round in 0..200 {
        for _ in 0..QSIZE {
            request(&mut r);
        }
        let paused = r.dev.process_tx();
        sent += r.tx.take_used(&r.m).len();
        assert!(r.dev.muxer().control_backlog() <= TX_STOP);
        if paused {
            paused_at = Some(round);
            break;
        }
    }
    let round = paused_at.expect("TX never paused for the backlog");
    assert_eq!(sent, TX_STOP, "TX stopped exactly at the threshold");
    for _ in 0..QSIZE {
        request(&mut r);
    }
    assert!(r.dev.process_tx(), "still paused with no RX buffers");
    assert!(r.tx.take_used(&r.m).is_empty(), "paused TX took packets");
    // RX buffers drain the backlog and TX resumes on its own.
    for i in 0..u64::from(QSIZE) {
        r.rx.push(&r.m, &[(0x20_0000 + i * 0x100, 44 + 64, F_WRITE)]);
    }
    r.dev.process_queues();
    let delivered = r.rx.take_used(&r.m);
    assert_eq!(delivered.len(), usize::from(QSIZE));
    assert_eq!(received(&r.m, 0x20_0000).0, OP_RST);
    assert!(!r.tx.take_used(&r.m).is_empty(), "TX did not resume");
    assert!(r.dev.muxer().control_backlog() <= TX_STOP);
    eprintln!(
        "vsock flood: TX paused after {sent} requests (round {round}), backlog {}",
        r.dev.muxer().control_backlog()
    );
}

#[test]
fn repeated_credit_requests_are_coalesced() {
    let mut r = rig("credit");
    let (_host, port) = established(&mut r, b"");
    for _ in 0..QSIZE {
        r.m.write_slice(&header(1024, port, 7, 0), GuestAddress(0x40_0000))
            .unwrap();
        r.tx.push(&r.m, &[(0x40_0000, 44, 0)]);
    }
    r.dev.process_tx();
    assert_eq!(r.dev.muxer().control_backlog(), 1);
    assert_eq!(
        r.dev.muxer().stats().control_coalesced,
        u64::from(QSIZE) - 1
    );
}

#[test]
fn host_connections_that_never_finish_are_closed_at_their_deadline() {
    let mut r = rig("deadline");
    // One sends no CONNECT line; one's guest never answers.
    let mut silent = UnixStream::connect(&r.uds).unwrap();
    let mut unanswered = UnixStream::connect(&r.uds).unwrap();
    unanswered.write_all(b"CONNECT 77\n").unwrap();
    let start = Instant::now();
    let mux = r.dev.muxer();
    mux.accept();
    let (interest, _) = mux.take_interest();
    for i in &interest {
        mux.socket_ready(i.token, WANT_IN);
    }
    let next = mux.next_deadline().expect("a deadline");
    assert!(next <= start + muxer::CONNECT_LINE_TIMEOUT + Duration::from_secs(1));
    mux.expire(start);
    assert_eq!(mux.stats().timeouts, 0, "nothing is late yet");
    mux.expire(start + muxer::CONNECT_LINE_TIMEOUT + Duration::from_secs(1));
    assert_eq!(mux.stats().timeouts, 1);
    mux.expire(start + muxer::GUEST_RESPONSE_TIMEOUT + Duration::from_secs(1));
    assert_eq!(mux.stats().timeouts, 2);
    assert!(mux.next_deadline().is_none());
    drop(mux.take_interest());
    for s in [&mut silent, &mut unanswered] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut b = [0u8; 8];
        assert_eq!(s.read(&mut b).unwrap(), 0, "host socket not closed");
    }
    // The request it never took is withdrawn; a reset says the port is
    // closed, should the guest have seen it.
    r.rx.push(&r.m, &[(0x10_0000, 44 + 64, F_WRITE)]);
    r.rx.push(&r.m, &[(0x10_1000, 44 + 64, F_WRITE)]);
    r.dev.process_rx();
    assert_eq!(r.rx.take_used(&r.m).len(), 1);
    assert_eq!(received(&r.m, 0x10_0000).0, OP_RST);
}

#[test]
fn the_worker_closes_a_silent_host_connection_by_itself() {
    let r = rig("worker");
    let uds = r.uds.clone();
    let dev = Arc::new(Mutex::new(r.dev));
    let mut manager: EventManager<Box<dyn MutEventSubscriber + Send>> =
        EventManager::new().unwrap();
    manager.add_subscriber(Box::new(VsockHandler::new(dev.clone())));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopping = stop.clone();
    let worker = std::thread::spawn(move || {
        while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = manager.run_with_timeout(100);
        }
    });
    let mut silent = UnixStream::connect(&uds).unwrap();
    let start = Instant::now();
    silent
        .set_read_timeout(Some(muxer::CONNECT_LINE_TIMEOUT * 3))
        .unwrap();
    let mut b = [0u8; 8];
    let n = silent.read(&mut b);
    let waited = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    worker.join().unwrap();
    assert_eq!(n.unwrap(), 0, "not closed");
    assert!(
        waited >= muxer::CONNECT_LINE_TIMEOUT - Duration::from_millis(100)
            && waited < muxer::CONNECT_LINE_TIMEOUT * 2,
        "closed after {waited:?}"
    );
    assert_eq!(crate::bus::lock(&dev).muxer().stats().timeouts, 1);
}
