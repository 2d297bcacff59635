//! The one error type of the cgroup placement library.
//!
//! Every variant names the value that was wrong — the cgroup path, the TID,
//! the number written — and keeps the underlying cause as `#[source]`, so a
//! log line built from the error chain says what failed *and* why.

use std::fmt;
use std::io;
use std::path::PathBuf;

use super::version::CgroupVersion;

/// A limit the sandbox was asked to enforce.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Limit {
    /// A CPU quota, in CPUs.
    CpuQuota(f64),
    /// A memory limit, in bytes.
    Memory(u64),
    /// A CPU weight, in OCI/v1 shares (2–262144; v2 gets the matching
    /// `cpu.weight`).
    CpuShares(u64),
}

impl Limit {
    /// The controller that enforces it (the same name on v1 and v2).
    pub fn controller(&self) -> &'static str {
        match self {
            Limit::CpuQuota(_) | Limit::CpuShares(_) => "cpu",
            Limit::Memory(_) => "memory",
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::CpuQuota(cpus) => write!(f, "CPU quota {cpus} CPUs"),
            Limit::Memory(bytes) => write!(f, "memory limit {bytes} bytes"),
            Limit::CpuShares(shares) => write!(f, "CPU shares {shares}"),
        }
    }
}

/// Why a limit's controller cannot be had where the sandbox is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blocker {
    /// A non-root cgroup on the way holds processes other than this one, so
    /// it cannot pass controllers on (cgroup v2's no-internal-process rule).
    Busy {
        /// Those processes.
        pids: Vec<i32>,
    },
    /// The cgroup2 hierarchy does not offer the controller at all (on a
    /// hybrid host it belongs to a v1 hierarchy).
    NotOffered {
        /// What its root's `cgroup.controllers` lists.
        offered: String,
    },
    /// No mounted cgroup v1 hierarchy carries the controller.
    NotMounted,
}

impl fmt::Display for Blocker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Blocker::Busy { pids } => {
                let pids: Vec<String> = pids.iter().map(ToString::to_string).collect();
                write!(f, "which holds other processes ({})", pids.join(", "))
            }
            Blocker::NotOffered { offered } => write!(
                f,
                "whose hierarchy does not offer it (its root's cgroup.controllers: {offered:?})"
            ),
            Blocker::NotMounted => f.write_str("as no cgroup v1 hierarchy carries it"),
        }
    }
}

impl Blocker {
    /// What the user can do about it, for the library's callers.
    pub fn hint(&self) -> &'static str {
        match self {
            Blocker::Busy { .. } => "give a parent cgroup that holds no processes",
            Blocker::NotOffered { .. } => {
                "use cgroup v1 here, or a host whose cgroup2 hierarchy offers it"
            }
            Blocker::NotMounted => "mount its v1 hierarchy",
        }
    }
}

/// Errors of cgroup creation, thread placement, statistics and teardown.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The sandbox id cannot be used as one cgroup directory name.
    #[error("invalid sandbox id {id:?}: {reason}")]
    InvalidSandboxId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// The `linux.cgroupsPath`-style parent could not be parsed.
    #[error("invalid cgroupsPath {path:?}: {reason}")]
    InvalidCgroupsPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A CPU quota (in CPUs) outside the range the kernel accepts.
    #[error("invalid CPU quota {value} CPUs: {reason}")]
    InvalidCpuQuota {
        /// The quota as given, in CPUs.
        value: f64,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// A memory limit that does not fit the kernel's signed 64-bit field.
    #[error("invalid memory limit {value} bytes: it must be between 1 and {max}", max = i64::MAX)]
    InvalidMemoryLimit {
        /// The limit as given, in bytes.
        value: u64,
    },

    /// A requested limit cannot be enforced: its controller cannot be
    /// enabled for the sandbox's cgroups. Never dropped with a warning.
    #[error("{limit}: the {} controller cannot be enabled in {cgroup}, {blocker}; {}", limit.controller(), blocker.hint())]
    LimitUnenforceable {
        /// The limit asked for.
        limit: Limit,
        /// The cgroup in the way, as `/proc/<pid>/cgroup` spells it (the
        /// hierarchy's root for [`Blocker::NotOffered`], `cgroup v1` for
        /// [`Blocker::NotMounted`]).
        cgroup: String,
        /// Why.
        blocker: Blocker,
    },

    /// Writing `+controller` to a `cgroup.subtree_control` failed.
    #[error("{limit}: cannot enable the {} controller in {}/cgroup.subtree_control", limit.controller(), dir.display())]
    EnableController {
        /// The limit that needs it.
        limit: Limit,
        /// The cgroup directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// Writing `-controller` to a `cgroup.subtree_control` failed (teardown,
    /// restoring the cgroup the process returns to).
    #[error("cannot disable the {controller} controller in {}/cgroup.subtree_control", dir.display())]
    DisableController {
        /// The controller.
        controller: &'static str,
        /// The cgroup directory.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// cgroup v2 device rules: the eBPF device program could not be loaded
    /// or attached.
    #[error(
        "cannot {op} the eBPF program enforcing the device rules of {} (cgroup v2 device rules \
         need CAP_BPF and CAP_SYS_ADMIN, and a kernel with CONFIG_CGROUP_BPF)",
        dir.display()
    )]
    DeviceProgram {
        /// `load` or `attach`.
        op: &'static str,
        /// The cgroup it is for.
        dir: PathBuf,
        /// The verifier's log when loading failed (empty otherwise).
        verifier: String,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A device rule that the devices controller would reject.
    #[error("invalid device rule {rule}: {reason}")]
    InvalidDeviceRule {
        /// The rule, in devices.allow syntax.
        rule: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A TID that is zero or negative.
    #[error("invalid TID {tid}: thread ids are positive")]
    InvalidTid {
        /// The TID as given.
        tid: i32,
    },

    /// The same TID was passed twice (as two vCPUs, or as a vCPU and an
    /// overhead thread).
    #[error("TID {tid} is listed more than once in the vCPU/overhead thread lists")]
    DuplicateTid {
        /// The repeated TID.
        tid: i32,
    },

    /// A vCPU TID that is not (or no longer) a thread of this process.
    #[error("vCPU TID {tid} is not a thread of this process (no /proc/self/task/{tid})")]
    NotOurThread {
        /// The TID as given.
        tid: i32,
    },

    /// No hierarchy of the requested cgroup version is mounted.
    #[error("no cgroup {version} hierarchy is mounted (see /proc/self/mountinfo)")]
    NotMounted {
        /// The version that was asked for or detected.
        version: CgroupVersion,
    },

    /// `/proc/self/cgroup` has no line for a mounted hierarchy.
    #[error("/proc/self/cgroup has no entry for the {hierarchy} hierarchy")]
    OriginUnknown {
        /// The hierarchy (controller list, or `unified`).
        hierarchy: String,
    },

    /// A cgroup path lies outside what the mount at `mount_point` shows.
    #[error("cgroup {cgroup} is not visible under {mount_point} (mount root {mount_root})")]
    NotVisible {
        /// The cgroup path, relative to the hierarchy root.
        cgroup: String,
        /// Where the hierarchy is mounted.
        mount_point: PathBuf,
        /// Which cgroup of the hierarchy the mount shows.
        mount_root: PathBuf,
    },

    /// Reading a file (cgroup interface file or procfs) failed.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A file had unexpected content.
    #[error("cannot parse {path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What was unexpected.
        detail: String,
    },

    /// Writing a value to a cgroup interface file failed.
    #[error("cannot write {value:?} to {path}")]
    Write {
        /// The file.
        path: PathBuf,
        /// What was written.
        value: String,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// A cgroups-rs controller operation failed.
    #[error("cannot {op} {path} (value {value:?})")]
    Controller {
        /// What was being done (e.g. `set cpu quota of`).
        op: &'static str,
        /// The cgroup directory or file.
        path: PathBuf,
        /// The value written, if any.
        value: String,
        /// The cause reported by cgroups-rs.
        #[source]
        source: Box<cgroups_rs::fs::error::Error>,
    },

    /// Creating a cgroup directory failed.
    #[error("cannot create cgroup directory {path}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The sandbox's own cgroup already exists: another sandbox with the same
    /// id, or leftovers of a crashed run.
    #[error("cgroup {path} already exists; refusing to adopt it")]
    AlreadyExists {
        /// The directory.
        path: PathBuf,
    },

    /// A cpuset cgroup is still empty after copying from its parent, so no
    /// task could join it.
    #[error("{path}/{file} is empty after initialising it from the parent cpuset")]
    CpusetEmpty {
        /// The cgroup directory.
        path: PathBuf,
        /// `cpuset.cpus` or `cpuset.mems`.
        file: &'static str,
    },

    /// Moving a vCPU thread into its cgroup failed.
    #[error("cannot move vCPU TID {tid} into {path}")]
    MoveVcpu {
        /// The vCPU thread.
        tid: i32,
        /// The interface file written (`tasks` or `cgroup.threads`).
        path: PathBuf,
        /// The cause reported by cgroups-rs.
        #[source]
        source: Box<cgroups_rs::fs::error::Error>,
    },

    /// Moving a thread (or the whole process) failed.
    #[error("cannot move TID {tid} into {path}")]
    MoveThread {
        /// The thread (or, for `cgroup.procs`, the process).
        tid: i32,
        /// The interface file written.
        path: PathBuf,
        /// The cause reported by cgroups-rs.
        #[source]
        source: Box<cgroups_rs::fs::error::Error>,
    },

    /// `sched_setaffinity` or `sched_getaffinity` failed.
    #[error("cannot {op} CPU affinity of TID {tid} (CPUs {cpus:?})")]
    Affinity {
        /// `set` or `get`.
        op: &'static str,
        /// The thread.
        tid: i32,
        /// The CPUs asked for (empty for `get`).
        cpus: Vec<u32>,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// The affinity read back differs from the one just set (the kernel
    /// silently narrowed it, e.g. through a cpuset).
    #[error("CPU affinity of TID {tid} is {actual:?} after setting {wanted:?}")]
    AffinityNotApplied {
        /// The thread.
        tid: i32,
        /// The CPUs asked for.
        wanted: Vec<u32>,
        /// The CPUs the kernel reports.
        actual: Vec<u32>,
    },

    /// A CPU number too large for a `cpu_set_t`.
    #[error("CPU {cpu} is beyond the {max} CPUs a cpu_set_t holds")]
    CpuOutOfRange {
        /// The CPU number.
        cpu: u32,
        /// The capacity of the mask.
        max: usize,
    },

    /// The sandbox has been torn down; it cannot place threads any more.
    #[error("sandbox {sandbox_id:?} has been torn down")]
    TornDown {
        /// The sandbox.
        sandbox_id: String,
    },

    /// The thread that makes the sandbox's cgroups (while the VM is built)
    /// could not be started.
    #[error("cannot start the cgroup-setup thread")]
    SetupThread(#[source] io::Error),

    /// The thread that makes the sandbox's cgroups panicked.
    #[error("the cgroup-setup thread panicked; what it made is swept at the next start")]
    SetupPanicked,

    /// Removing a cgroup directory failed.
    #[error("cannot remove cgroup {path}")]
    RemoveDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },

    /// Teardown met several problems; it went on past each of them.
    #[error("teardown of sandbox {sandbox_id:?} met {count} problem(s); the first was: {first}")]
    Teardown {
        /// The sandbox.
        sandbox_id: String,
        /// How many problems there were.
        count: usize,
        /// The first problem.
        #[source]
        first: Box<CgroupError>,
    },
}

impl CgroupError {
    /// The errno behind an error from a cgroups-rs controller, if any.
    pub(crate) fn errno_of(source: &cgroups_rs::fs::error::Error) -> Option<i32> {
        std::error::Error::source(source)
            .and_then(|cause| cause.downcast_ref::<io::Error>())
            .and_then(io::Error::raw_os_error)
    }
}
