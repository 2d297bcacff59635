//! Unit tests of RX/TX against a socketpair back end and `virtio-queue`'s
//! mock driver.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::sync::Arc;

use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::virtio::Interrupt;

const F_WRITE: u16 = 2;

fn mem() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x100_0000)]).unwrap()
}

/// A datagram socketpair standing in for a tap: one read, one frame.
fn pair() -> (File, File) {
    let mut fds = [0; 2];
    let flags = libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socketpair writes two fds into the array we own.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, flags, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: both fds are fresh and owned by nobody else.
    unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) }
}

struct Rig<'a> {
    net: Net,
    host: File,
    rxq: MockSplitQueue<'a, GuestMemoryMmap>,
    txq: MockSplitQueue<'a, GuestMemoryMmap>,
    irq: EventFd,
}

fn rig(m: &GuestMemoryMmap) -> Rig<'_> {
    let (dev_end, host) = pair();
    let mut net = Net::new(Box::new(dev_end), [2, 0, 0, 0, 0, 1]).unwrap();
    let rxq = MockSplitQueue::create(m, GuestAddress(0x1_0000), 16);
    let txq = MockSplitQueue::create(m, GuestAddress(0x2_0000), 16);
    let irq = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let activation = Activation {
        mem: m.clone(),
        queues: vec![rxq.create_queue().unwrap(), txq.create_queue().unwrap()],
        queue_events: vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
        interrupt: Arc::new(Interrupt::new(irq.try_clone().unwrap())),
        acked_features: VIRTIO_F_VERSION_1,
    };
    net.activate(activation).unwrap();
    Rig {
        net,
        host,
        rxq,
        txq,
        irq,
    }
}

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(payload);
    f
}

#[test]
fn rx_waits_for_guest_buffers_without_dropping() {
    let m = mem();
    let mut r = rig(&m);
    r.host.write_all(&frame(b"first frame")).unwrap();
    // No RX buffers: the frame is held and the back end is no longer read.
    assert!(!r.net.process_rx());
    assert_eq!(r.net.stats().rx_frames, 0);
    r.host.write_all(&frame(b"second")).unwrap();
    // Buffers arrive: both frames get through, in order.
    r.rxq
        .add_desc_chains(
            &[
                desc(0x10_0000, 2048, F_WRITE),
                desc(0x20_0000, 2048, F_WRITE),
            ],
            0,
        )
        .unwrap();
    assert!(r.net.process_rx());
    assert_eq!(r.net.stats().rx_frames, 2);
    let mut got = [0u8; 11];
    m.read_slice(&mut got, GuestAddress(0x10_0000 + VNET_HDR_LEN as u64))
        .unwrap();
    assert_eq!(&got, b"first frame");
    assert_eq!(
        m.read_obj::<u16>(GuestAddress(0x10_000a)).unwrap(),
        1,
        "num_buffers"
    );
    assert_eq!(r.rxq.used().idx().load(), 2);
    assert!(r.irq.read().unwrap() > 0);
}

#[test]
fn rx_buffer_too_small_drops_that_frame_only() {
    let m = mem();
    let mut r = rig(&m);
    r.rxq
        .add_desc_chains(
            &[desc(0x10_0000, 16, F_WRITE), desc(0x20_0000, 2048, F_WRITE)],
            0,
        )
        .unwrap();
    r.host.write_all(&frame(&[7u8; 100])).unwrap();
    r.host.write_all(&frame(&[8u8; 10])).unwrap();
    r.net.process_rx();
    assert_eq!(r.net.stats().rx_too_big, 1);
    assert_eq!(r.net.stats().rx_frames, 1);
}

#[test]
fn tx_sends_gathered_frames_and_drops_malformed_ones() {
    let m = mem();
    let mut r = rig(&m);
    m.write_slice(&[0xffu8; VNET_HDR_LEN], GuestAddress(0x30_0000))
        .unwrap();
    m.write_slice(b"hello host", GuestAddress(0x31_0000))
        .unwrap();
    r.txq
        .build_desc_chain(&[
            desc(0x30_0000, VNET_HDR_LEN as u32, 1),
            desc(0x31_0000, 10, 0),
        ])
        .unwrap();
    r.net.process_tx();
    let mut buf = [0u8; 64];
    let n = r.host.read(&mut buf).unwrap();
    assert_eq!(&buf[VNET_HDR_LEN..n], b"hello host");
    assert!(
        buf[..10].iter().all(|b| *b == 0),
        "guest header flags are cleared"
    );
    assert_eq!(r.net.stats().tx_frames, 1);
    // A device-writable descriptor in a TX chain is dropped, not sent.
    r.txq
        .add_desc_chains(&[desc(0x30_0000, 100, F_WRITE)], 2)
        .unwrap();
    r.net.process_tx();
    assert_eq!(r.net.stats().tx_dropped, 1);
    assert!(r.host.read(&mut buf).is_err());
}

#[test]
fn derived_macs_are_local_unicast_and_stable() {
    let a = derived_mac("tap0");
    assert_eq!(a, derived_mac("tap0"));
    assert_ne!(a, derived_mac("tap1"));
    assert_eq!(a[0] & 0x3, 0x2);
}

#[test]
fn a_back_end_at_end_of_stream_is_given_up_not_spun_on() {
    let m = mem();
    let r = rig(&m);
    drop(r);
    // A seqpacket pair (frames kept whole, like a datagram pair) whose peer
    // is gone reads 0 for ever.
    let mut fds = [0; 2];
    let flags = libc::SOCK_SEQPACKET | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    // SAFETY: socketpair writes two fds into the array we own.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, flags, 0, fds.as_mut_ptr()) };
    assert_eq!(rc, 0);
    // SAFETY: both fds are fresh and owned by nobody else.
    let (dev_end, host) = unsafe { (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1])) };
    drop(host);
    let mut net = Net::new(Box::new(dev_end), [2, 0, 0, 0, 0, 1]).unwrap();
    let q = MockSplitQueue::create(&m, GuestAddress(0x1_0000), 16);
    let q2 = MockSplitQueue::create(&m, GuestAddress(0x2_0000), 16);
    net.activate(Activation {
        mem: m.clone(),
        queues: vec![q.create_queue().unwrap(), q2.create_queue().unwrap()],
        queue_events: vec![EventFd::new(0).unwrap(), EventFd::new(0).unwrap()],
        interrupt: Arc::new(Interrupt::new(EventFd::new(libc::EFD_NONBLOCK).unwrap())),
        acked_features: VIRTIO_F_VERSION_1,
    })
    .unwrap();
    let (done, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let keep = net.process_rx();
        let _ = done.send((keep, net));
    });
    let (keep, mut net) = wait
        .recv_timeout(std::time::Duration::from_secs(10))
        .expect("process_rx spun on a back end at end of stream");
    assert!(!keep, "the back end is still watched");
    assert!(net.stats().backend_failed);
    assert!(!net.process_rx(), "given up for good");
}

#[test]
fn runts_are_bounded_per_pass() {
    let m = mem();
    let mut r = rig(&m);
    for _ in 0..(RX_BUDGET + 10) {
        r.host.write_all(&[1u8; 4]).unwrap();
    }
    assert!(r.net.process_rx(), "runts are no reason to stop watching");
    assert_eq!(r.net.stats().rx_runts, RX_BUDGET as u64);
    r.net.process_rx();
    assert_eq!(r.net.stats().rx_runts, RX_BUDGET as u64 + 10);
}

#[test]
fn the_guest_never_sees_the_taps_header_flags() {
    let m = mem();
    let mut r = rig(&m);
    // A tap header claiming a validated checksum and TCPv4 GSO.
    let mut f = vec![0xffu8; VNET_HDR_LEN];
    f.extend_from_slice(b"payload");
    r.host.write_all(&f).unwrap();
    r.rxq
        .add_desc_chains(&[desc(0x10_0000, 2048, F_WRITE)], 0)
        .unwrap();
    r.net.process_rx();
    let mut hdr = [0xeeu8; VNET_HDR_LEN];
    m.read_slice(&mut hdr, GuestAddress(0x10_0000)).unwrap();
    assert_eq!(hdr, [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
}
