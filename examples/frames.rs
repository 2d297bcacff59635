//! Host end of the virtio-net benchmark: sends or counts raw Ethernet
//! frames of EtherType 0x88b5 on an interface (run it inside the network
//! namespace that holds the tap), in batches (`sendmmsg`/`recvmmsg`) so the
//! host side is not what limits the figures.
//!
//! ```text
//! frames send IFACE COUNT    # COUNT frames of 1514 bytes, then one end frame
//! frames count IFACE IDLE_MS # counts until no frame for IDLE_MS; prints "N frames B bytes"
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::ffi::CString;
use std::io;
use std::time::{Duration, Instant};

const ETH_P_BENCH: u16 = 0x88b5;
const FRAME: usize = 1514;
const BATCH: usize = 64;

fn packet_socket(iface: &str) -> io::Result<(i32, i32)> {
    let name = CString::new(iface).map_err(|_| io::Error::other("bad interface name"))?;
    // SAFETY: if_nametoindex reads the NUL-terminated name.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
    if index == 0 {
        return Err(io::Error::last_os_error());
    }
    let proto = (ETH_P_BENCH).to_be() as i32;
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sockaddr_ll is plain data; zeroed is valid; bind reads it.
    let rc = unsafe {
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_BENCH.to_be();
        sll.sll_ifindex = index;
        libc::bind(
            fd,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((fd, index))
}

fn send(iface: &str, count: u64) -> io::Result<()> {
    let (fd, _) = packet_socket(iface)?;
    let mut frame = vec![0x5au8; FRAME];
    frame[..6].fill(0xff);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x99]);
    frame[12..14].copy_from_slice(&ETH_P_BENCH.to_be_bytes());
    frame[14] = 0;
    let mut iov: Vec<libc::iovec> = (0..BATCH)
        .map(|_| libc::iovec {
            iov_base: frame.as_mut_ptr().cast(),
            iov_len: FRAME,
        })
        .collect();
    // SAFETY: mmsghdr is plain data; zeroed is valid.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0u64;
    let start = Instant::now();
    while sent < count {
        let n = (count - sent).min(BATCH as u64) as u32;
        // SAFETY: msgs holds n valid headers pointing at a live frame.
        let rc = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == io::ErrorKind::WouldBlock {
                std::thread::yield_now();
                continue;
            }
            return Err(e);
        }
        sent += rc as u64;
    }
    // The end marker.
    frame[14] = 0xff;
    std::thread::sleep(Duration::from_millis(20));
    for _ in 0..3 {
        // SAFETY: one valid header pointing at the live frame.
        unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), 1, 0) };
    }
    println!(
        "{sent} frames sent in {:.3} s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn count(iface: &str, idle_ms: u64) -> io::Result<()> {
    let (fd, _) = packet_socket(iface)?;
    let tv = libc::timeval {
        tv_sec: (idle_ms / 1000) as i64,
        tv_usec: ((idle_ms % 1000) * 1000) as i64,
    };
    // SAFETY: setsockopt reads the timeval we pass.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        )
    };
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut iov: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: 2048,
        })
        .collect();
    // SAFETY: plain data, zeroed is valid.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    println!("ready");
    let (mut frames, mut bytes) = (0u64, 0u64);
    loop {
        // SAFETY: msgs holds BATCH headers pointing at live buffers.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                BATCH as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if rc <= 0 {
            break; // idle timeout
        }
        for m in &msgs[..rc as usize] {
            frames += 1;
            bytes += u64::from(m.msg_len);
        }
    }
    println!("{frames} frames {bytes} bytes");
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let result = match (
        args.get(1).map(String::as_str),
        args.get(2),
        args.get(3).and_then(|n| n.parse().ok()),
    ) {
        (Some("send"), Some(iface), Some(n)) => send(iface, n),
        (Some("count"), Some(iface), Some(ms)) => count(iface, ms),
        _ => {
            eprintln!("usage: frames send IFACE COUNT | frames count IFACE IDLE_MS");
            std::process::exit(2);
        }
    };
    if let Err(e) = result {
        eprintln!("frames: {e}");
        std::process::exit(1);
    }
}
