//! The AF_VSOCK calls std has no wrapper for, each in one small function.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes no pointers; the result is checked.
    let fd =
        cvt(unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn address(cid: u32, port: u32) -> libc::sockaddr_vm {
    // SAFETY: sockaddr_vm is plain old data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = cid;
    addr.svm_port = port;
    addr
}

const ADDR_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;

/// A stream connected to `cid:port`.
pub fn connect(cid: u32, port: u32) -> io::Result<OwnedFd> {
    let sock = socket()?;
    let addr = address(cid, port);
    // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes that outlives the call.
    cvt(unsafe { libc::connect(sock.as_raw_fd(), (&raw const addr).cast(), ADDR_LEN) })?;
    Ok(sock)
}

/// Listens on `port` (any CID) and returns the first connection.
pub fn accept_one(port: u32) -> io::Result<OwnedFd> {
    let sock = socket()?;
    let addr = address(libc::VMADDR_CID_ANY, port);
    // SAFETY: `addr` is a valid sockaddr_vm of ADDR_LEN bytes that outlives the call.
    cvt(unsafe { libc::bind(sock.as_raw_fd(), (&raw const addr).cast(), ADDR_LEN) })?;
    // SAFETY: listen(2) takes no pointers.
    cvt(unsafe { libc::listen(sock.as_raw_fd(), 1) })?;
    // SAFETY: null address pointers are allowed: the peer's address is not wanted.
    let fd = cvt(unsafe {
        libc::accept4(
            sock.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        )
    })?;
    // SAFETY: `fd` is a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Shuts down the sending side of `sock`: the peer reads end of file.
pub fn shutdown_write(sock: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: shutdown(2) takes no pointers.
    cvt(unsafe { libc::shutdown(sock.as_raw_fd(), libc::SHUT_WR) }).map(|_| ())
}
