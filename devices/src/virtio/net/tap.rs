//! A tap interface, opened by name through /dev/net/tun with
//! `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, non-blocking.
//!
//! Written here because no maintained crate of the rust-vmm family offers
//! a tap (Firecracker and Cloud Hypervisor each keep their own): it is four
//! ioctls. Offloads are switched off (`TUNSETOFFLOAD 0`) since the device
//! negotiates none, so every frame fits one plain vnet header.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use thiserror::Error;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;

/// Size of the vnet header on the tap and in the queues (virtio_net_hdr_v1).
pub const VNET_HDR_LEN: usize = 12;

/// A tap could not be opened.
#[derive(Debug, Error)]
pub enum TapError {
    /// The interface name does not fit.
    #[error("tap name {0:?} is empty or longer than 15 bytes")]
    BadName(String),
    /// /dev/net/tun cannot be opened.
    #[error("cannot open /dev/net/tun")]
    OpenTun(#[source] io::Error),
    /// The network namespace cannot be entered.
    #[error("cannot open tap {name} in network namespace {netns}")]
    Netns {
        /// The interface.
        name: String,
        /// The namespace file.
        netns: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// An ioctl failed.
    #[error("cannot {what} tap {name}")]
    Ioctl {
        /// What we tried.
        what: &'static str,
        /// The interface.
        name: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// An open tap interface.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

impl Tap {
    /// Attaches to (or creates) the tap interface `name`.
    pub fn open(name: &str) -> Result<Self, TapError> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(TapError::BadName(name.to_string()));
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
            _pad: [0; 22],
        };
        req.name[..name.len()].copy_from_slice(name.as_bytes());
        let ioctl_err = |what| {
            let name = name.to_string();
            move |source| TapError::Ioctl { what, name, source }
        };
        ioctl_ptr(&file, TUNSETIFF, &mut req).map_err(ioctl_err("attach to"))?;
        let mut hdr_len = VNET_HDR_LEN as libc::c_int;
        ioctl_ptr(&file, TUNSETVNETHDRSZ, &mut hdr_len)
            .map_err(ioctl_err("set the vnet header size of"))?;
        ioctl_value(&file, TUNSETOFFLOAD, 0).map_err(ioctl_err("disable offloads of"))?;
        Ok(Self {
            file,
            name: name.to_string(),
        })
    }

    /// Like [`Tap::open`], inside the network namespace `netns`: a
    /// short-lived thread (`tap-open`) enters it, opens the tap and ends;
    /// the fd stays bound to that namespace, so the VMM's threads never
    /// leave their own.
    pub fn open_in(name: &str, netns: &std::path::Path) -> Result<Self, TapError> {
        let ns_err = |source| TapError::Netns {
            name: name.to_string(),
            netns: netns.to_path_buf(),
            source,
        };
        let ns = File::open(netns).map_err(ns_err)?;
        let owned = name.to_string();
        let opened = std::thread::Builder::new()
            .name("tap-open".into())
            .spawn(move || -> Result<Self, TapError> {
                tracing::debug!("tap-open thread has TID {}", gettid());
                enter_netns(&ns).map_err(|source| TapError::Netns {
                    name: owned.clone(),
                    netns: std::path::PathBuf::new(),
                    source,
                })?;
                Tap::open(&owned)
            })
            .map_err(ns_err)?
            .join()
            .map_err(|_| ns_err(io::Error::other("the tap-open thread panicked")))?;
        opened.map_err(|e| match e {
            TapError::Netns { name, source, .. } => TapError::Netns {
                name,
                netns: netns.to_path_buf(),
                source,
            },
            other => other,
        })
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Moves the calling thread into the network namespace `ns`.
fn enter_netns(ns: &File) -> io::Result<()> {
    // SAFETY: setns on an fd we own; it changes only this thread's
    // namespace (the thread ends right after).
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn gettid() -> i64 {
    // SAFETY: gettid has no arguments and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) }
}

fn ioctl_ptr<T>(file: &File, request: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is a live, correctly sized struct for this tun ioctl,
    // which only reads or writes within it; the fd is ours.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, arg as *mut T) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn ioctl_value(file: &File, request: libc::c_ulong, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: this tun ioctl takes its argument by value and touches no memory.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request, value) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Read for Tap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }
}

impl Write for Tap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}
