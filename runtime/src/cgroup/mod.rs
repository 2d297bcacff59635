//! Cgroup placement of a sandbox's VMM threads.
//!
//! Corral's VMM is a library inside the runtime process, so a sandbox's
//! "VM" is a set of threads of this process: one per vCPU (`vcpu0`, …), the
//! VMM workers (`vmm-io`, `vmm-blk0`, …), a kernel-created
//! `kvm-nx-lpage-re`, and the runtime's own threads. `Vmm::create` spawns
//! them parked; [`Sandbox::place`] must run before `Vmm::start` lets the
//! vCPUs enter the guest. One sandbox per process is assumed: placement
//! moves *every* thread of the process. New threads start in their
//! creator's cgroup — notably `kvm-nx-lpage-re`, which recent kernels
//! (6.18 here) create at a VM's first `KVM_RUN`. `Vmm::create` makes that
//! first `KVM_RUN` itself (one that returns at once, before any guest
//! code), so the worker already exists when `place` runs and is placed
//! with the overhead threads; one `place` per sandbox is enough.
//!
//! # Placement modes
//!
//! * [`PlacementMode::Split`] (default): vCPU threads go to the sandbox
//!   (constrained) cgroup, which carries the containers' CPU quota; every
//!   other thread goes to an overhead cgroup with no CPU limit, so device
//!   emulation and the runtime never eat into — or get starved by — the
//!   guest's quota. On v1 the overhead cgroup is a sibling tree,
//!   `P/corral_overhead/<sandbox id>` next to `P/<sandbox id>`.
//! * [`PlacementMode::SandboxOnly`]: the whole process goes to the sandbox
//!   cgroup; everything is charged to the pod.
//!
//! # cgroup v1
//!
//! Every mounted hierarchy among cpu, cpuacct, cpuset, memory, pids, blkio,
//! devices and freezer gets the sandbox's cgroups, and threads are placed one
//! TID at a time through each hierarchy's `tasks` file — never
//! `cgroup.procs`, which would drag all threads along. New cpusets are
//! seeded with the parent's `cpuset.cpus`/`cpuset.mems` (an empty cpuset
//! accepts no task). Caveat: memcg charges memory to the memcg of the
//! process's `mm` owner (the thread-group leader), not of the faulting
//! thread, so memory cannot be split per thread; the memory limit is written
//! where the leader is (overhead cgroup in Split mode).
//!
//! # cgroup v2
//!
//! A thread can only move on its own inside a *threaded* subtree, and the
//! domain controllers (memory, io) cannot be enabled in one. So each
//! sandbox gets a domain cgroup `P/<sandbox id>` — memory (and, when
//! available, io/pids) for the whole VM — with two threaded children:
//! `vcpu` (cpu.max, cpuset) and `overhead` (no CPU limit). The process
//! enters the domain through `cgroup.procs`, then threads enter the children
//! through `cgroup.threads`. Trade-off: memory and io are accounted and
//! limited for the VM as a whole (vCPU and VMM threads together), and the
//! overhead cgroup sits inside the sandbox's domain rather than in a
//! separate tree.
//!
//! A requested limit is enforced or [`Sandbox::create`] (or
//! [`Sandbox::update_limits`]) fails with [`CgroupError::LimitUnenforceable`],
//! one line naming the limit, the cgroup in the way and why (the processes
//! it holds, or the controller missing from the hierarchy); it is never
//! dropped with a warning. Corral enables the controller in every
//! `cgroup.subtree_control` from the first ancestor that offers it down to
//! the domain — the parents it creates included — and obeys the
//! no-internal-process rule: when the process itself is the only one in a
//! cgroup on the way (the default parent), it moves into its domain first,
//! and teardown disables those controllers again before moving it back.
//! With a relative parent whose base, the process's cgroup, holds other
//! processes, the sandbox goes beside that cgroup instead, beneath the
//! nearest ancestor where the controllers can be had (on a systemd host its
//! slice, like a transient scope); `unified.rs` has the details. Device rules
//! become an eBPF program on the constrained cgroup (`devfilter.rs`).
//!
//! # Drivers
//!
//! cgroupfs always. A systemd-form path (`slice:prefix:name`) uses systemd
//! when it answers on the system bus: a transient scope with `Delegate=yes`
//! holding the process, inside which Corral manages the subtree itself as
//! above. The scope's directory is found beneath systemd's own root in each
//! hierarchy (PID 1's cgroup without `init.scope`, as runc does), so a
//! systemd that itself runs in a container is followed. Teardown moves the
//! process out of the scope in every hierarchy systemd put it in (on a
//! hybrid host that includes the cgroup2 one, where systemd tracks
//! processes) before stopping it, as stopping a scope kills what is inside.
//! `tests/systemd.rs` checks all this against a real systemd run as PID 1
//! of a private PID namespace. When systemd is not reachable (checked cheaply first, see
//! [`systemd`]), the same `slice/…/scope` path is created
//! with cgroupfs beneath the process's cgroup, with a warning and
//! [`DriverInfo::fallback`] set — it never fails for that reason.
//!
//! # Parent, pinning, statistics, teardown
//!
//! With an empty or relative parent, cgroups go beneath the cgroup the
//! process is in, per hierarchy (`/proc/self/cgroup`), never at a hierarchy
//! root unless the process is there — except on v2 when that cgroup holds
//! other processes and limits are asked for (see above). Pinning is in [`affinity`], sizing from
//! OCI resources in [`sizing`], statistics in [`stats`]. Teardown (explicit
//! or on drop) moves remaining threads back to the cgroup the process came
//! from and removes every cgroup the sandbox created, deepest first; a
//! failed [`Sandbox::create`] leaves nothing behind. A process killed
//! before its teardown leaves its cgroups; with
//! [`CgroupConfig::stale_prefix`] the next sandbox of that naming removes
//! them before creating its own ([`crate::sweep`]). [`TeardownHandle`] is
//! the teardown detached from the sandbox, for a last-resort cleanup from
//! another thread.
//!
//! # Use of cgroups-rs
//!
//! cgroups-rs (0.5) provides: v1 mount discovery, `/proc/<pid>/cgroup`
//! parsing, the controllers that write `tasks`, `cgroup.procs`,
//! `cgroup.threads`, `cgroup.type`, CFS quota, memory limits and device
//! rules, cpuset seeding, and the systemd D-Bus client. Written by hand,
//! each with the reason at the spot: cgroup2 mount discovery (its `V2` is
//! fixed to `/sys/fs/cgroup`), directory creation/removal with ownership
//! tracking, `cgroup.subtree_control`, stat reads (its getters turn errors
//! into zeros), CPU affinity and procfs thread times. Its `Cgroup` type and
//! its `manager` module are not used: the former assumes one hierarchy
//! layout per cgroup and a fixed v2 mount, the latter needs oci-spec 0.10
//! while the runtime speaks oci-spec 0.8.

pub mod affinity;
mod devfilter;
pub mod devices;
mod error;
mod fsio;
mod layout;
mod path;
mod placement;
mod procfs;
mod sandbox;
mod selfmove;
pub mod sizing;
pub mod stats;
pub mod systemd;
mod teardown;
mod unified;
mod version;

use std::path::PathBuf;

pub use affinity::PinDecision;
pub use devices::{DeviceKind, DeviceRule};
pub use error::{Blocker, CgroupError, Limit};
pub use layout::HierarchyPaths;
pub use placement::{PlacementReport, SkipReason, SkippedThread, VcpuPlacement};
pub use sandbox::{DriverInfo, DriverKind, Sandbox, SandboxPaths};
pub use selfmove::Spot;
pub use sizing::{from_resources, Sizing, SizingDefaults};
pub use stats::{CgroupStats, CpuStatSource};
pub use teardown::TeardownHandle;
pub use version::CgroupVersion;

/// Where the process's threads go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum PlacementMode {
    /// vCPU threads in the constrained sandbox cgroup, every other thread
    /// in the unconstrained overhead cgroup.
    #[default]
    Split,
    /// The whole process in the sandbox cgroup.
    SandboxOnly,
}

/// How to build a sandbox's cgroups.
#[derive(Debug, Clone, PartialEq)]
pub struct CgroupConfig {
    /// The parent, in OCI `linux.cgroupsPath` form: `""` or a relative path
    /// (beneath the process's cgroup), `/a/b` (from the hierarchy root) or
    /// `slice:prefix:name` (systemd scope).
    pub parent: String,
    /// The sandbox id; one cgroup directory name.
    pub sandbox_id: String,
    /// Placement mode.
    pub mode: PlacementMode,
    /// CPU quota of the constrained cgroup, in CPUs (`None`: unlimited).
    pub cpu_quota: Option<f64>,
    /// Memory limit of the sandbox, in bytes (`None`: unlimited).
    pub memory_limit: Option<u64>,
    /// CPU weight of the constrained cgroup, in OCI shares (`None`: the
    /// default weight).
    pub cpu_shares: Option<u64>,
    /// Manage vCPU affinity (pin when the vCPU count equals the allowed
    /// cpuset's size, otherwise clear pinning). `false` leaves it alone.
    pub pin_vcpus: bool,
    /// Device rules for the sandbox cgroup, applied in order before the
    /// VMM's own devices are allowed (v1: the devices controller; v2: an
    /// eBPF program).
    pub devices: Vec<DeviceRule>,
    /// Paths of the disks attached to the VM; those that are block devices
    /// stay allowed in the devices cgroup.
    pub disks: Vec<PathBuf>,
    /// Force a cgroup version; `None` detects it.
    pub version: Option<CgroupVersion>,
    /// Sweep stale siblings first: with `Some(prefix)` (`corral run`:
    /// `"corral-"`, its sandbox id being `corral-<its pid>`), cgroups named
    /// `<prefix><pid>` beneath the parent (and beneath `corral_overhead`
    /// there, on v1) whose process is gone are removed before this
    /// sandbox's are created ([`crate::sweep`] says when a pid counts as
    /// gone). `None` (default) sweeps nothing.
    pub stale_prefix: Option<String>,
}

impl CgroupConfig {
    /// Defaults for `sandbox_id`: beneath the process's cgroup, Split mode,
    /// no limits, pinning managed, no device rules, version detected, no
    /// sweep.
    pub fn new(sandbox_id: impl Into<String>) -> CgroupConfig {
        CgroupConfig {
            parent: String::new(),
            sandbox_id: sandbox_id.into(),
            mode: PlacementMode::Split,
            cpu_quota: None,
            memory_limit: None,
            cpu_shares: None,
            pin_vcpus: true,
            devices: Vec::new(),
            disks: Vec::new(),
            version: None,
            stale_prefix: None,
        }
    }
}
