//! An eventfd that `vm-superio` devices can raise, for interrupts (irqfd)
//! and reset lines alike.

use std::io;
use std::os::fd::{AsRawFd, RawFd};

use vmm_sys_util::eventfd::EventFd;

/// An [`EventFd`] usable as a `vm_superio::Trigger`.
///
/// `vm-superio` cannot implement its trait for `EventFd` itself (neither type
/// is local to it), hence this newtype.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// The underlying eventfd, e.g. to register it as an irqfd.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

impl AsRawFd for EventFdTrigger {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
