//! Control packets (responses, resets, credit updates and requests, host
//! connection requests) waiting for a guest RX buffer.
//!
//! A guest can make the host owe it control packets faster than it takes
//! them: flood TX with requests to closed ports (one reset each) or credit
//! requests while posting no RX buffers. The queue stays bounded two ways:
//! - one entry per connection and operation: a second credit update for a
//!   connection that already has one queued adds nothing, and so on;
//! - past [`TX_STOP`] entries the device stops taking TX packets (they wait
//!   in the guest's ring, where the guest pays for them) until RX buffers
//!   have drained the queue. What the host side itself queues is bounded by
//!   the connection count.

use std::collections::{HashSet, VecDeque};

/// (host port, guest port).
pub(super) type ConnKey = (u32, u32);

/// Entries past which TX processing pauses.
pub const TX_STOP: usize = 1024;

/// A control packet waiting for an RX buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Control {
    pub(super) key: ConnKey,
    pub(super) op: u16,
    pub(super) flags: u32,
}

/// The queue; see the module documentation.
#[derive(Debug, Default)]
pub(super) struct ControlQueue {
    items: VecDeque<Control>,
    queued: HashSet<(ConnKey, u16)>,
    /// Entries not queued because an equal one already was.
    coalesced: u64,
}

impl ControlQueue {
    /// Queues `op` for `key` unless the same operation is already queued
    /// for it (flags of the first are kept: the ops that repeat carry none).
    pub(super) fn push(&mut self, key: ConnKey, op: u16, flags: u32) {
        if self.queued.insert((key, op)) {
            self.items.push_back(Control { key, op, flags });
        } else {
            self.coalesced += 1;
        }
    }

    /// The oldest entry.
    pub(super) fn pop(&mut self) -> Option<Control> {
        let c = self.items.pop_front()?;
        self.queued.remove(&(c.key, c.op));
        Some(c)
    }

    /// Keeps the entries for which `keep` holds.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(&Control) -> bool) {
        let queued = &mut self.queued;
        self.items.retain(|c| {
            let k = keep(c);
            if !k {
                queued.remove(&(c.key, c.op));
            }
            k
        });
    }

    pub(super) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(super) fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether TX processing should pause.
    pub(super) fn is_full(&self) -> bool {
        self.items.len() >= TX_STOP
    }

    pub(super) fn coalesced(&self) -> u64 {
        self.coalesced
    }

    pub(super) fn clear(&mut self) {
        self.items.clear();
        self.queued.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_coalesce_and_order_is_kept() {
        let mut q = ControlQueue::default();
        q.push((1, 2), 6, 0);
        q.push((1, 2), 6, 0);
        q.push((1, 3), 6, 0);
        q.push((1, 2), 3, 0);
        assert_eq!(q.len(), 3);
        assert_eq!(q.coalesced(), 1);
        assert_eq!(q.pop().map(|c| (c.key, c.op)), Some(((1, 2), 6)));
        // Once sent, the same op may be queued again.
        q.push((1, 2), 6, 0);
        assert_eq!(q.len(), 3);
        q.retain(|c| c.key != (1, 2));
        assert_eq!(q.len(), 1);
        q.push((1, 2), 3, 0);
        assert_eq!(q.len(), 2, "retain forgot the removed entries");
    }

    #[test]
    fn fullness_is_a_threshold() {
        let mut q = ControlQueue::default();
        for port in 0..TX_STOP as u32 {
            assert!(!q.is_full());
            q.push((port, 1), 3, 0);
        }
        assert!(q.is_full());
        q.pop();
        assert!(!q.is_full());
        q.clear();
        assert!(q.is_empty());
    }
}
