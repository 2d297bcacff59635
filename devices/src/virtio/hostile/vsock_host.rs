//! The host side of the hostile vsock run: listeners, host programs
//! connecting in, data both ways, readiness as the worker's epoll reports
//! it, and deadlines (see the parent module).

use std::cell::RefCell;
use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::super::vsock::{Muxer, Vsock};
use super::Rng;

/// The host side of a vsock device under test, driven as the worker and
/// host programs would: see the module documentation.
pub(super) struct VsockHost {
    rng: Rng,
    uds: std::path::PathBuf,
    listeners: Vec<UnixListener>,
    streams: Vec<UnixStream>,
    /// Registered tokens and their interest, as the worker's epoll holds.
    watched: std::collections::HashMap<u32, u8>,
    stats: Rc<RefCell<VsockReach>>,
}

/// What the stateful vsock run reached.
#[derive(Default, Debug, Clone, Copy)]
pub(super) struct VsockReach {
    pub(super) guest_connections_accepted: u64,
    pub(super) host_connections_opened: u64,
    pub(super) bytes_to_guest_written: u64,
    pub(super) bytes_from_guest_read: u64,
    pub(super) expiries: u64,
}

/// Guest ports of the vsock run; host ports the guest connects to.
pub(super) const GUEST_PORTS: u32 = 5000;
pub(super) const HOST_PORTS: u32 = 1000;

impl VsockHost {
    pub(super) fn new(uds: &std::path::Path, seed: u64, stats: Rc<RefCell<VsockReach>>) -> Self {
        let listeners = (0..4)
            .map(|i| {
                let path = format!("{}_{}", uds.display(), HOST_PORTS + i);
                let _ = std::fs::remove_file(&path);
                let l = UnixListener::bind(&path).unwrap();
                l.set_nonblocking(true).unwrap();
                l
            })
            .collect();
        Self {
            rng: Rng(seed),
            uds: uds.to_path_buf(),
            listeners,
            streams: Vec::new(),
            watched: Default::default(),
            stats,
        }
    }

    pub(super) fn apply(&mut self, mux: &mut Muxer) {
        apply_interest(&mut self.watched, mux);
    }

    /// One round of host activity around the device's queue work.
    pub(super) fn step(&mut self, dev: &mut Vsock) {
        let mut reach = self.stats.borrow_mut();
        let rng = &mut self.rng;
        for l in &self.listeners {
            while let Ok((s, _)) = l.accept() {
                s.set_nonblocking(true).unwrap();
                reach.guest_connections_accepted += 1;
                if self.streams.len() < 64 {
                    self.streams.push(s);
                }
            }
        }
        if rng.chance(30) && self.streams.len() < 64 {
            if let Ok(mut s) = UnixStream::connect(&self.uds) {
                s.set_nonblocking(true).unwrap();
                let port = GUEST_PORTS + rng.below(4) as u32;
                let line: Vec<u8> = match rng.below(6) {
                    0 => b"CONNEC".to_vec(),                          // never finished
                    1 => (0..40).map(|_| rng.next() as u8).collect(), // garbage
                    2 => format!("CONNECT {port}\nearly data").into_bytes(),
                    _ => format!("CONNECT {port}\n").into_bytes(),
                };
                let _ = s.write(&line);
                reach.host_connections_opened += 1;
                self.streams.push(s);
            }
        }
        let mut buf = [0u8; 4096];
        for s in &mut self.streams {
            if rng.chance(50) {
                let n = rng.below(70_000) as usize;
                let data = vec![0x5a; n];
                if let Ok(w) = s.write(&data) {
                    reach.bytes_to_guest_written += w as u64;
                }
            }
            if rng.chance(70) {
                while let Ok(r) = s.read(&mut buf) {
                    if r == 0 {
                        break;
                    }
                    reach.bytes_from_guest_read += r as u64;
                }
            }
        }
        if rng.chance(5) && !self.streams.is_empty() {
            let i = rng.below(self.streams.len() as u64) as usize;
            self.streams.swap_remove(i); // the host program goes away
        }
        let mux = dev.muxer();
        mux.accept();
        apply_interest(&mut self.watched, mux);
        let ready: Vec<(u32, u8)> = self.watched.iter().map(|(t, w)| (*t, *w)).collect();
        for (token, want) in ready {
            // As epoll would report, and sometimes spuriously.
            let events = if rng.chance(20) { 3 } else { want };
            mux.socket_ready(token, events);
        }
        if rng.chance(3) {
            reach.expiries += 1;
            mux.expire(Instant::now() + Duration::from_secs(3600));
        }
        apply_interest(&mut self.watched, mux);
    }
}

/// Applies the muxer's watch changes to `watched`, as the worker would.
fn apply_interest(watched: &mut std::collections::HashMap<u32, u8>, mux: &mut Muxer) {
    let (changes, closed) = mux.take_interest();
    for c in changes {
        if c.new == 0 {
            watched.remove(&c.token);
        } else {
            watched.insert(c.token, c.new);
        }
    }
    drop(closed);
}
