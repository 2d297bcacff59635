//! One process in a container (its init, or an exec): created through the
//! spawner, placed in the container's cgroup, configured over its control
//! pipe, started on request; its stdio and exit status stay here until the
//! container is removed.

use std::fs::File;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use nix::fcntl::OFlag;
use nix::pty::Winsize;
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use nix::sys::socket::{
    recvmsg, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use nix::unistd::{pipe2, Pid};
use tokio::io::unix::AsyncFd;

use crate::cgroup::GuestCgroups;
use crate::child_config::ChildConfig;
use crate::error::AgentError;
use crate::reaper::{Exit, ExitWatch};
use crate::spawn::{ChildFds, Spawner};
use crate::stdio::{async_fd, read_fd, write_fd, Input, Output};

/// How long a child may take to set up (mounts, user) before it counts as
/// hung.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// See the module documentation.
pub struct Process {
    /// Empty for the container's init.
    pub exec_id: String,
    /// In the agent's PID namespace.
    pub pid: i32,
    exit: ExitWatch,
    /// stdin.
    pub stdin: Input,
    /// stdout (with a terminal: everything).
    pub stdout: Output,
    /// stderr; `None` with a terminal.
    pub stderr: Option<Output>,
    pty_master: std::sync::Mutex<Option<OwnedFd>>,
    wait_delivered: std::sync::atomic::AtomicBool,
    control: std::sync::Mutex<Option<File>>,
    report: tokio::sync::Mutex<Option<AsyncFd<OwnedFd>>>,
}

fn pipe() -> Result<(OwnedFd, OwnedFd), AgentError> {
    pipe2(OFlag::O_CLOEXEC).map_err(|e| AgentError::sys("pipe", e))
}

impl Process {
    /// Spawns the child, places it in `cgroup`, sends it `config` and waits
    /// until it is set up (not yet executing the process).
    pub async fn create(
        spawner: &Spawner,
        cgroups: &GuestCgroups,
        cgroup: &Path,
        flags: CloneFlags,
        join_pidns: Option<File>,
        config: &ChildConfig,
        grace: Duration,
    ) -> Result<Process, AgentError> {
        let id = config.container_id.clone();
        let tty = config.process.terminal() == Some(true);
        let (child_stdio, parent_stdio, console) = if tty {
            let null = || {
                File::options()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .map(OwnedFd::from)
                    .map_err(|e| AgentError::path("open", "/dev/null", e))
            };
            let (agent_end, child_end) = socketpair(
                AddressFamily::Unix,
                SockType::Stream,
                None,
                SockFlag::SOCK_CLOEXEC,
            )
            .map_err(|e| AgentError::sys("socketpair", e))?;
            (
                [null()?, null()?, null()?],
                None,
                Some((agent_end, child_end)),
            )
        } else {
            let (in_r, in_w) = pipe()?;
            let (out_r, out_w) = pipe()?;
            let (err_r, err_w) = pipe()?;
            ([in_r, out_w, err_w], Some((in_w, out_r, err_r)), None)
        };
        let (control_r, control_w) = pipe()?;
        let (report_r, report_w) = pipe()?;
        let (console_agent, console_child) = match console {
            Some((a, c)) => (Some(a), Some(c)),
            None => (None, None),
        };
        let fds = ChildFds {
            stdio: child_stdio,
            control: control_r,
            report: report_w,
            console: console_child,
        };
        let (pid, exit) = spawner
            .spawn(flags, join_pidns, fds)
            .await
            .map_err(|e| AgentError::sys("clone the container process", e))?;
        // From here on the child exists: on any failure, kill it (the
        // reaper collects it).
        let kill = |e: AgentError| {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
            e
        };
        cgroups.add(cgroup, pid).map_err(kill)?;
        let json = serde_json::to_vec(config).map_err(|e| kill(AgentError::MalformedSpec(e)))?;
        let mut framed = (json.len() as u32).to_le_bytes().to_vec();
        framed.extend_from_slice(&json);
        // Asynchronously: a config larger than the pipe waits for the child
        // to read it, and nothing else may wait meanwhile.
        let control = async_fd(control_w).map_err(|e| kill(AgentError::sys("control pipe", e)))?;
        match tokio::time::timeout(SETUP_TIMEOUT, write_fd(&control, &framed)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(kill(AgentError::sys("send the child its config", e))),
            Err(_) => {
                return Err(kill(AgentError::ChildFailed {
                    id: id.clone(),
                    message: format!("did not read its config within {SETUP_TIMEOUT:?}"),
                }))
            }
        }
        // The start byte goes into an empty pipe: a plain write is enough.
        let control = File::from(control.into_inner());
        let report = async_fd(report_r).map_err(|e| kill(AgentError::sys("report pipe", e)))?;
        let said = tokio::time::timeout(SETUP_TIMEOUT, read_report(&report, true))
            .await
            .map_err(|_| {
                kill(AgentError::ChildFailed {
                    id: id.clone(),
                    message: format!("set-up did not finish within {SETUP_TIMEOUT:?}"),
                })
            })?;
        if said != "ok\n" {
            let message = said.trim().trim_start_matches("error: ").to_string();
            let message = if message.is_empty() {
                "the container process ended during set-up".to_string()
            } else {
                message
            };
            return Err(kill(AgentError::ChildFailed { id, message }));
        }
        let (stdin, stdout, stderr, pty_master) = match (parent_stdio, console_agent) {
            (Some((stdin_w, stdout_r, stderr_r)), _) => (
                Input::new(stdin_w, false).map_err(|e| kill(AgentError::sys("stdin", e)))?,
                Output::start(stdout_r, exit.clone(), grace)
                    .map_err(|e| kill(AgentError::sys("stdout", e)))?,
                Some(
                    Output::start(stderr_r, exit.clone(), grace)
                        .map_err(|e| kill(AgentError::sys("stderr", e)))?,
                ),
                None,
            ),
            (None, Some(sock)) => {
                // Sent before "ok": already queued.
                let master = receive_fd(&sock)
                    .map_err(|e| kill(AgentError::sys("receive the terminal", e)))?;
                if let Some(size) = config.process.console_size() {
                    let ws = Winsize {
                        ws_row: size.height() as u16,
                        ws_col: size.width() as u16,
                        ws_xpixel: 0,
                        ws_ypixel: 0,
                    };
                    set_winsize(&master, &ws)
                        .map_err(|e| kill(AgentError::sys("TIOCSWINSZ", e)))?;
                }
                let dup =
                    |fd: &OwnedFd| fd.try_clone().map_err(|e| kill(AgentError::sys("dup", e)));
                let input = dup(&master)?;
                let keep = dup(&master)?;
                (
                    Input::new(input, true).map_err(|e| kill(AgentError::sys("stdin", e)))?,
                    Output::start(master, exit.clone(), grace)
                        .map_err(|e| kill(AgentError::sys("stdout", e)))?,
                    None,
                    Some(keep),
                )
            }
            (None, None) => {
                return Err(kill(AgentError::InvalidArgument(
                    "no stdio for the process".into(),
                )))
            }
        };
        Ok(Process {
            exec_id: String::new(),
            pid,
            exit,
            stdin,
            stdout,
            stderr,
            pty_master: std::sync::Mutex::new(pty_master),
            wait_delivered: std::sync::atomic::AtomicBool::new(false),
            control: std::sync::Mutex::new(Some(control)),
            report: tokio::sync::Mutex::new(Some(report)),
        })
    }

    /// Lets the child execute the process; fails with the child's message
    /// if it could not.
    pub async fn start(&self, id: &str) -> Result<(), AgentError> {
        let control = self
            .control
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let Some(mut control) = control else {
            return Err(AgentError::WrongState {
                id: id.to_string(),
                state: "started",
                wanted: "it can start once",
            });
        };
        control
            .write_all(b"S")
            .map_err(|e| AgentError::sys("start the container process", e))?;
        let report = self.report.lock().await.take();
        if let Some(report) = report {
            let said = read_report(&report, false).await;
            if !said.is_empty() {
                return Err(AgentError::ChildFailed {
                    id: id.to_string(),
                    message: said.trim().trim_start_matches("error: ").to_string(),
                });
            }
        }
        Ok(())
    }

    /// Waits for the process to end.
    pub async fn wait(&self) -> Exit {
        let mut exit = self.exit.clone();
        loop {
            if let Some(e) = *exit.borrow_and_update() {
                return e;
            }
            if exit.changed().await.is_err() {
                // Cannot happen: the reaper sends before dropping.
                if let Some(e) = *exit.borrow() {
                    return e;
                }
                return Exit {
                    status: 255,
                    signaled: false,
                };
            }
        }
    }

    /// Once the process ends, frees what only a live process needs: the
    /// agent's stdin end and the terminal's master copy (output is drained
    /// on its own and kept until read).
    pub fn release_on_exit(self: &std::sync::Arc<Self>) {
        let p = self.clone();
        tokio::spawn(async move {
            p.wait().await;
            p.stdin.release().await;
            p.pty_master
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
        });
    }

    /// Records that WaitProcess returned this process's exit to the host.
    pub fn mark_wait_delivered(&self) {
        self.wait_delivered
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the host has everything: the exit status and every output
    /// stream to its end. An exec in that state can be forgotten.
    pub fn fully_collected(&self) -> bool {
        self.wait_delivered
            .load(std::sync::atomic::Ordering::Acquire)
            && self.stdout.eof_read()
            && self.stderr.as_ref().is_none_or(|e| e.eof_read())
    }

    /// The exit, if it ended.
    pub fn exited(&self) -> Option<Exit> {
        *self.exit.borrow()
    }

    /// Sends `signal` unless the process ended.
    pub fn signal(&self, signal: Signal) -> Result<(), AgentError> {
        if self.exited().is_some() {
            return Ok(());
        }
        match nix::sys::signal::kill(Pid::from_raw(self.pid), signal) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(AgentError::sys("kill", e)),
        }
    }

    /// Resizes the terminal.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<(), AgentError> {
        let master = self.pty_master.lock().unwrap_or_else(|p| p.into_inner());
        let Some(master) = master.as_ref() else {
            return Err(AgentError::InvalidArgument(
                "the process has no terminal to resize (or it ended)".into(),
            ));
        };
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        set_winsize(master, &size).map_err(|e| AgentError::sys("TIOCSWINSZ", e))
    }
}

/// The fd the child sent with SCM_RIGHTS on `sock` (without waiting).
fn receive_fd(sock: &OwnedFd) -> std::io::Result<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(fd) = fds.first() {
                // SAFETY: the kernel just installed this fd for us.
                return Ok(unsafe { OwnedFd::from_raw_fd(*fd) });
            }
        }
    }
    Err(std::io::Error::other("the child sent no terminal"))
}

fn set_winsize(master: &OwnedFd, size: &Winsize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: TIOCSWINSZ reads a Winsize from a valid pointer.
    let rc = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, size as *const Winsize) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What the child wrote on its report pipe: up to the first line when
/// `line`, else until EOF.
async fn read_report(report: &AsyncFd<OwnedFd>, line: bool) -> String {
    let mut said = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match read_fd(report, &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => said.extend_from_slice(&buf[..n]),
        }
        if (line && said.contains(&b'\n')) || said.len() > 64 << 10 {
            break;
        }
    }
    String::from_utf8_lossy(&said).into_owned()
}
