//! Corral's container runtime (sandbox and container lifecycle, cgroup
//! placement of vCPU threads, the containerd shim).
//!
//! Empty for now: the VMM it builds on lives in `corral-vmm`, which already
//! reports the TIDs this crate will place — `Vmm::vcpu_tids` into the pod's
//! constrained cgroup, `Vmm::other_tids` into the unconstrained overhead
//! cgroup — in the window between `Vmm::create` and `Vmm::start`.
