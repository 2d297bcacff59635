//! Creating container processes: `clone` straight into `execve` of this
//! very binary (`corral-agent __child`, see `child.rs`), so no Rust code
//! runs in a forked copy of the multi-threaded agent. Clones happen on one
//! dedicated thread, "agent-spawner": joining a container's PID namespace
//! (for exec) changes that thread's namespace for children, and is undone
//! right after.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::sync::{mpsc, Arc};

use nix::sched::{setns, CloneFlags};
use tokio::sync::oneshot;

use crate::child_config::{CHILD_ARG, CONSOLE_FD, CONTROL_FD, REPORT_FD};
use crate::reaper::{ExitWatch, Reaper};

/// The child's ends: its stdin, stdout, stderr, control and report fds.
pub struct ChildFds {
    /// fds 0, 1 and 2 of the child.
    pub stdio: [OwnedFd; 3],
    /// Its [`CONTROL_FD`].
    pub control: OwnedFd,
    /// Its [`REPORT_FD`].
    pub report: OwnedFd,
    /// Its [`CONSOLE_FD`], with a terminal.
    pub console: Option<OwnedFd>,
}

struct Job {
    flags: CloneFlags,
    join_pidns: Option<File>,
    fds: ChildFds,
    reply: oneshot::Sender<io::Result<(i32, ExitWatch)>>,
}

/// Hands clone jobs to the spawner thread.
pub struct Spawner {
    jobs: mpsc::Sender<Job>,
}

/// What the child executes, built before `clone` (the child may not
/// allocate).
struct ExecPlan {
    exe: CString,
    argv: [*const libc::c_char; 3],
    envp: [*const libc::c_char; 1],
    _arg0: CString,
    _arg1: CString,
}

impl Spawner {
    /// Starts the spawner thread.
    pub fn start(reaper: Arc<Reaper>) -> io::Result<Spawner> {
        let own_pidns = File::open("/proc/self/ns/pid")?;
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("agent-spawner".into())
            .spawn(move || {
                tracing::debug!(
                    tid = nix::unistd::gettid().as_raw(),
                    "agent-spawner started"
                );
                for job in rx {
                    let result = run_job(&reaper, &own_pidns, &job);
                    let _ = job.reply.send(result);
                }
            })?;
        Ok(Spawner { jobs: tx })
    }

    /// Clones a child with `flags` (new namespaces), in the PID namespace
    /// of `join_pidns` when given, running `corral-agent __child` with
    /// `fds`; returns its pid and exit watch.
    pub async fn spawn(
        &self,
        flags: CloneFlags,
        join_pidns: Option<File>,
        fds: ChildFds,
    ) -> io::Result<(i32, ExitWatch)> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                flags,
                join_pidns,
                fds,
                reply,
            })
            .map_err(|_| io::Error::other("the spawner thread is gone"))?;
        answer
            .await
            .map_err(|_| io::Error::other("the spawner thread dropped a job"))?
    }
}

fn run_job(reaper: &Reaper, own_pidns: &File, job: &Job) -> io::Result<(i32, ExitWatch)> {
    let plan = ExecPlan::new()?;
    let fds = [
        job.fds.stdio[0].as_raw_fd(),
        job.fds.stdio[1].as_raw_fd(),
        job.fds.stdio[2].as_raw_fd(),
        job.fds.control.as_raw_fd(),
        job.fds.report.as_raw_fd(),
        job.fds.console.as_ref().map_or(-1, |c| c.as_raw_fd()),
    ];
    if let Some(ns) = &job.join_pidns {
        setns(ns.as_fd(), CloneFlags::CLONE_NEWPID).map_err(io::Error::from)?;
    }
    let result = reaper.register_with(|| clone_exec(job.flags, &fds, &plan));
    if job.join_pidns.is_some() {
        if let Err(e) = setns(own_pidns.as_fd(), CloneFlags::CLONE_NEWPID) {
            // Every later child would land in that container: stop here.
            let reason = format!("cannot return the spawner to the agent's PID namespace: {e}");
            tracing::error!("{reason}");
            if std::process::id() == 1 {
                crate::pid1::power_off(&reason);
            }
            std::process::abort();
        }
    }
    result
}

impl ExecPlan {
    fn new() -> io::Result<ExecPlan> {
        let exe = CString::new("/proc/self/exe")?;
        let arg0 = CString::new("corral-agent")?;
        let arg1 = CString::new(CHILD_ARG)?;
        Ok(ExecPlan {
            argv: [arg0.as_ptr(), arg1.as_ptr(), std::ptr::null()],
            envp: [std::ptr::null()],
            exe,
            _arg0: arg0,
            _arg1: arg1,
        })
    }
}

/// Clones (fork-like, with `flags`' new namespaces and SIGCHLD) and, in the
/// child, puts `fds` at 0, 1, 2, [`CONTROL_FD`], [`REPORT_FD`] and
/// [`CONSOLE_FD`] (when not -1) and executes the plan. Returns the child's
/// pid.
fn clone_exec(flags: CloneFlags, fds: &[RawFd; 6], plan: &ExecPlan) -> io::Result<i32> {
    let flags = flags.bits() as libc::c_ulong | libc::SIGCHLD as libc::c_ulong;
    // SAFETY: a raw clone without CLONE_VM is a fork: the child gets a copy
    // of this thread's stack and runs only `after_clone`, which makes
    // async-signal-safe system calls on memory prepared before the clone
    // and never returns.
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => after_clone(fds, plan),
        pid => Ok(pid as i32),
    }
}

/// The child's side of [`clone_exec`]: system calls only.
fn after_clone(fds: &[RawFd; 6], plan: &ExecPlan) -> ! {
    let targets = [0, 1, 2, CONTROL_FD, REPORT_FD, CONSOLE_FD];
    let mut high = [-1; 6];
    for (i, fd) in fds.iter().enumerate() {
        if *fd < 0 {
            continue;
        }
        // SAFETY: fcntl on an fd number; out of the way of the targets.
        high[i] = unsafe { libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 16) };
        if high[i] < 0 {
            // SAFETY: _exit never returns and runs no handlers.
            unsafe { libc::_exit(126) };
        }
    }
    for (from, to) in high.iter().zip(targets) {
        if *from < 0 {
            continue;
        }
        // SAFETY: dup2 between fd numbers; the target loses close-on-exec.
        if unsafe { libc::dup2(*from, to) } < 0 {
            // SAFETY: as above.
            unsafe { libc::_exit(126) };
        }
    }
    // SAFETY: the plan's pointers are NUL-terminated strings and arrays
    // built before the clone and still alive in this copy of the memory.
    unsafe {
        libc::execve(plan.exe.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        libc::_exit(126)
    }
}
