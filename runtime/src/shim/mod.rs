//! `containerd-shim-corral-v2`: containerd runs each pod in a Corral
//! micro-VM, and the shim process *is* that VM's monitor.
//!
//! - [`service`]: the shim's modes (`start`, serve, `delete`) and which
//!   pod a container belongs to;
//! - [`task`]: containerd's task API on the pod;
//! - [`pod_vm`]: the pod VM (through [`crate::pod`]: create → place →
//!   start → agent ready), its disk slots and teardown;
//! - [`disk`]: container rootfs → ext4 disk the agent mounts;
//! - [`stdio`]: FIFOs ↔ the agent's streams;
//! - [`leftovers`]: what a killed shim leaves, and `delete`'s cleanup;
//! - [`config`]: defaults and the TOML file;
//! - [`logging`]: the log FIFO and the runtime threads' TIDs.
//!
//! Threads: the async runtime's workers (`shim-tokio`, 2, created before
//! anything is placed, so placement moves them to the overhead cgroup; its
//! blocking-pool threads start later from there and stay there), the VMM's
//! (`vcpuN` in the pod's cgroup; `vmm-io`, device workers in the overhead
//! cgroup) and `shim-vm-wait`, which waits for the VM's end.

pub mod config;
pub mod disk;
pub mod leftovers;
pub mod logging;
pub mod pod_vm;
pub mod service;
pub mod stdio;
pub mod task;

/// containerd's name for this runtime.
pub const RUNTIME_ID: &str = "io.containerd.corral.v2";

/// The shim binary's `main`: one multi-threaded runtime for the whole
/// process, its worker threads created up front.
pub fn main() {
    // Before any thread exists, so every thread inherits it: the shim's
    // own threads, the VMs' (each adds its allow-list) and mkfs.
    let deny = corral_vmm::seccomp::ThreadFilter::standalone(
        corral_vmm::seccomp::ThreadKind::Runtime,
        corral_vmm::SeccompPolicy::Enforce,
    );
    if let Err(e) = deny.install() {
        eprintln!("{RUNTIME_ID}: {e}; run without the control plane's seccomp filter");
        std::process::exit(1);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("shim-tokio")
        .on_thread_start(logging::record_thread)
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let config = containerd_shim::Config {
        no_setup_logger: true,
        // The containers run in the VM: the shim has no children to reap,
        // and reaping would steal mkfs's exit status.
        no_reaper: true,
        ..Default::default()
    };
    runtime.block_on(containerd_shim::asynchronous::run::<service::CorralShim>(
        RUNTIME_ID,
        Some(config),
    ));
}
