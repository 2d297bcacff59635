//! The activate/reset bookkeeping every virtio device shares.
//!
//! A device is inactive until the transport hands it an [`Activation`] on
//! DRIVER_OK, and gives the queues back on reset. In both directions the
//! device's worker thread must re-read the state (watch or stop watching
//! the queue eventfds), so each transition writes `state_changed`, which
//! the worker has registered in its event loop from the start.

use event_manager::{EventOps, EventSet, Events};
use tracing::warn;
use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

use super::{ActivateError, Activation};

/// Whether a device is active, and the eventfd that tells its worker when
/// that changes.
pub struct Lifecycle {
    /// `Some` between activation and reset.
    pub active: Option<Activation>,
    /// Written on activation and reset.
    pub state_changed: EventFd,
}

impl Lifecycle {
    /// An inactive device's lifecycle.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            active: None,
            state_changed: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?,
        })
    }

    /// Takes `a` if the device is inactive and `a` carries exactly
    /// `queues` queues, then wakes the worker.
    pub fn activate(&mut self, a: Activation, queues: usize) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        if a.queues.len() != queues || a.queue_events.len() != queues {
            return Err(ActivateError::Queues {
                needed: queues,
                got: a.queues.len(),
            });
        }
        self.active = Some(a);
        self.state_changed.write(1).map_err(ActivateError::Event)
    }

    /// Deactivates the device, wakes the worker and returns the queues, or
    /// `None` if the device was not active. `device` names it in logs.
    pub fn reset(&mut self, device: &str) -> Option<Vec<Queue>> {
        let active = self.active.take()?;
        if let Err(e) = self.state_changed.write(1) {
            warn!("{device}: cannot tell the worker about the reset: {e}");
        }
        Some(active.queues)
    }

    /// Registers `state_changed` in the worker's event loop under `data`.
    pub fn watch(&self, ops: &mut EventOps, data: u32, device: &str) {
        if let Err(e) = ops.add(Events::with_data(&self.state_changed, data, EventSet::IN)) {
            warn!("{device}: cannot watch for activation: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use virtio_queue::QueueT;
    use vm_memory::GuestAddress;

    use super::*;
    use crate::virtio::{GuestMemoryMmap, Interrupt};

    fn activation(queues: usize) -> Activation {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        Activation {
            mem,
            queues: (0..queues).map(|_| Queue::new(16).unwrap()).collect(),
            queue_events: (0..queues).map(|_| EventFd::new(0).unwrap()).collect(),
            interrupt: Arc::new(Interrupt::new(EventFd::new(0).unwrap())),
            acked_features: 0,
        }
    }

    #[test]
    fn activate_checks_queue_count_and_state() {
        let mut l = Lifecycle::new().unwrap();
        assert!(matches!(
            l.activate(activation(2), 3),
            Err(ActivateError::Queues { needed: 3, got: 2 })
        ));
        assert!(l.active.is_none());
        l.activate(activation(3), 3).unwrap();
        assert_eq!(l.state_changed.read().unwrap(), 1);
        assert!(matches!(
            l.activate(activation(3), 3),
            Err(ActivateError::AlreadyActive)
        ));
        assert_eq!(l.reset("test").map(|q| q.len()), Some(3));
        assert_eq!(l.state_changed.read().unwrap(), 1);
        assert!(l.reset("test").is_none());
    }
}
