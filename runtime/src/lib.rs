//! Corral's container runtime (sandbox and container lifecycle, cgroup
//! placement of vCPU threads, the containerd shim).
//!
//! The VMM it builds on lives in `corral-vmm`, which reports the TIDs this
//! crate places — `Vmm::vcpu_tids` into the pod's constrained cgroup,
//! `Vmm::other_tids` into the unconstrained overhead cgroup — in the window
//! between `Vmm::create` and `Vmm::start`. See [`cgroup`].
//!
//! [`image`] turns an OCI or `docker save` image into the squashfs disk the
//! guest mounts as its root. [`sweep`] removes what a killed Corral left
//! (stale `corral-<pid>` cgroups and sockets).

pub mod agent;
pub mod cgroup;
pub mod image;
pub mod pod;
#[cfg(feature = "shim")]
pub mod shim;
pub mod sweep;
