//! Console input: moves host input (stdin) into the UART on the `vmm-io`
//! thread, pausing while the UART's receive FIFO is full so that nothing is
//! dropped that the guest could still read.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use corral_devices::bus::lock;
use corral_devices::legacy::SerialConsole;
use event_manager::{EventOps, Events, MutEventSubscriber};
use tracing::warn;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

const STDIN_READABLE: u32 = 0;
const GUEST_WANTS_INPUT: u32 = 1;

/// Moves host input into the UART, pausing while its FIFO is full.
pub(crate) struct ConsoleInputHandler {
    input: File,
    serial: Arc<Mutex<SerialConsole>>,
    guest_wants_input: EventFd,
    paused: bool,
    closed: bool,
}

impl ConsoleInputHandler {
    /// Reads the process's stdin (through a duplicate, unbuffered fd).
    pub(crate) fn stdin(
        serial: Arc<Mutex<SerialConsole>>,
        guest_wants_input: EventFd,
    ) -> io::Result<Self> {
        let input = File::from(io::stdin().as_fd().try_clone_to_owned()?);
        Ok(Self {
            input,
            serial,
            guest_wants_input,
            paused: false,
            closed: false,
        })
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let room = lock(&self.serial).input_capacity();
        if room == 0 {
            // The guest has not drained the FIFO: stop watching the input
            // until it has (GUEST_WANTS_INPUT), so nothing is dropped.
            self.stop_watching(ops);
            self.paused = true;
            return;
        }
        let mut buf = [0u8; 64];
        let want = room.min(buf.len());
        match self.input.read(&mut buf[..want]) {
            Ok(0) => {
                self.stop_watching(ops);
                self.closed = true;
            }
            Ok(n) => {
                lock(&self.serial).enqueue_input(&buf[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                warn!("console: reading input failed, input disabled: {e}");
                self.stop_watching(ops);
                self.closed = true;
            }
        }
    }

    fn stop_watching(&self, ops: &mut EventOps) {
        let _ = ops.remove(Events::with_data(&self.input, STDIN_READABLE, EventSet::IN));
    }
}

impl MutEventSubscriber for ConsoleInputHandler {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::with_data(&self.input, STDIN_READABLE, EventSet::IN)) {
            // E.g. stdin is a regular file, which epoll cannot watch.
            warn!("console: cannot watch stdin, guest input disabled: {e}");
            self.closed = true;
        }
        if let Err(e) = ops.add(Events::with_data(
            &self.guest_wants_input,
            GUEST_WANTS_INPUT,
            EventSet::IN,
        )) {
            warn!("console: cannot watch the UART's input-ready event: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match events.data() {
            STDIN_READABLE if !self.closed => self.read_input(ops),
            GUEST_WANTS_INPUT => {
                let _ = self.guest_wants_input.read();
                if self.paused && !self.closed {
                    self.paused = false;
                    if let Err(e) =
                        ops.add(Events::with_data(&self.input, STDIN_READABLE, EventSet::IN))
                    {
                        warn!("console: cannot resume watching stdin: {e}");
                        self.closed = true;
                    }
                }
            }
            _ => {}
        }
    }
}
