//! `corral run`'s cgroup placement: builds the sandbox's cgroups from the
//! command line, places the VM's threads between `Vmm::create` and
//! `Vmm::start` (so no guest instruction runs unconstrained), and reports
//! CPU time and memory at the end.

use std::time::Instant;

use anyhow::Context;
use corral_runtime::cgroup::{Blocker, CgroupConfig, CgroupError, Limit, PlacementMode, Sandbox};
use corral_vmm::Vmm;
use tracing::info;

/// The cgroup options of `corral run`.
#[derive(clap::Args, Debug)]
pub struct CgroupArgs {
    /// Place the VM's threads in cgroups beneath PATH (OCI cgroupsPath form:
    /// relative to this process's cgroup, /absolute, or slice:prefix:name
    /// for systemd). Use "" for "right beneath this process's cgroup" (on
    /// cgroup v2 with limits, beside it if it holds other processes).
    #[arg(long, value_name = "PATH")]
    pub cgroup_parent: Option<String>,
    /// split: vCPU threads constrained, VMM threads in an unconstrained
    /// sibling; sandbox-only: the whole process constrained.
    #[arg(long, value_enum, default_value_t = Mode::Split, requires = "cgroup_parent")]
    pub cgroup_mode: Mode,
    /// CPU quota of the constrained cgroup, in CPUs (e.g. 0.5).
    #[arg(long, value_name = "CPUS", requires = "cgroup_parent", value_parser = parse_quota)]
    pub cpus_quota: Option<f64>,
    /// Memory limit of the sandbox, in MiB.
    #[arg(long, value_name = "MiB", requires = "cgroup_parent")]
    pub memory_limit: Option<u64>,
    /// Pin vCPU i to the i-th CPU of the allowed set when there are as many
    /// vCPUs as CPUs (otherwise let every vCPU use every allowed CPU).
    #[arg(long, requires = "cgroup_parent")]
    pub pin_vcpus: bool,
}

/// Placement mode on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// vCPUs constrained, VMM threads not.
    Split,
    /// Everything constrained.
    SandboxOnly,
}

fn parse_quota(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(q) if q.is_finite() && q > 0.0 && q <= 4096.0 => Ok(q),
        _ => Err(format!(
            "CPU quota {s:?} is not a number of CPUs between 0 and 4096"
        )),
    }
}

/// Creates the sandbox cgroups (if asked for) and places the VM's threads.
pub fn place(
    args: &CgroupArgs,
    vmm: &Vmm,
    disks: Vec<std::path::PathBuf>,
) -> anyhow::Result<Option<Sandbox>> {
    let Some(parent) = &args.cgroup_parent else {
        return Ok(None);
    };
    let mut config = CgroupConfig::new(format!("corral-{}", std::process::id()));
    config.parent = parent.clone();
    config.mode = match args.cgroup_mode {
        Mode::Split => PlacementMode::Split,
        Mode::SandboxOnly => PlacementMode::SandboxOnly,
    };
    config.cpu_quota = args.cpus_quota;
    config.memory_limit = args
        .memory_limit
        .map(|mib| {
            mib.checked_mul(1 << 20)
                .context("--memory-limit is too large")
        })
        .transpose()?;
    config.pin_vcpus = args.pin_vcpus;
    config.disks = disks;
    let mut sandbox = Sandbox::create(&config).map_err(|e| create_error(e, args))?;
    let report = sandbox
        .place(&vmm.vcpu_tids(), &vmm.other_tids())
        .context("cannot place the VM's threads in their cgroups")?;
    let placed = Instant::now();
    for (v, spawned) in report.vcpus.iter().zip(vmm.vcpu_spawned_at()) {
        info!(
            "cgroups: vcpu{} (TID {}) placed {} µs after its thread was spawned (the move itself took {} µs)",
            v.index,
            v.tid,
            placed.duration_since(spawned).as_micros(),
            v.latency_us
        );
    }
    for warning in &report.warnings {
        tracing::warn!("cgroups: {warning}");
    }
    let paths = sandbox.paths();
    info!(
        "cgroups: {:?} placement, {:?} driver; {paths:?}",
        config.mode,
        sandbox.driver().kind
    );
    Ok(Some(sandbox))
}

/// The error of a failed [`Sandbox::create`], in one line; a limit that
/// cannot be enforced is named by its option, with what to do.
fn create_error(error: CgroupError, args: &CgroupArgs) -> anyhow::Error {
    let CgroupError::LimitUnenforceable {
        limit,
        cgroup,
        blocker,
    } = &error
    else {
        return anyhow::Error::new(error).context("cannot create the sandbox cgroups");
    };
    let option = match limit {
        Limit::CpuQuota(cpus) => format!("--cpus-quota {cpus}"),
        Limit::Memory(bytes) => match args.memory_limit {
            Some(mib) => format!("--memory-limit {mib}"),
            None => format!("--memory-limit ({bytes} bytes)"),
        },
    };
    let hint = match blocker {
        Blocker::Busy { .. } => {
            "give --cgroup-parent a cgroup that holds no processes (e.g. /corral.slice)"
        }
        Blocker::NotOffered { .. } | Blocker::NotMounted => blocker.hint(),
    };
    anyhow::anyhow!(
        "{option}: the {} controller cannot be enabled in {cgroup}, {blocker}; {hint}",
        limit.controller()
    )
}

/// Logs CPU time and memory of the sandbox, then removes its cgroups.
pub fn finish(sandbox: Option<Sandbox>, vcpu_cpu: &[std::time::Duration]) {
    let Some(mut sandbox) = sandbox else { return };
    let vcpu: std::time::Duration = vcpu_cpu.iter().sum();
    let process = process_cpu_time();
    info!(
        "cpu: vCPU threads {} ms, every other thread {} ms (process total {} ms)",
        vcpu.as_millis(),
        process.saturating_sub(vcpu).as_millis(),
        process.as_millis()
    );
    match sandbox.stats() {
        Ok(stats) => info!("cgroups: stats {stats:?}"),
        Err(e) => tracing::warn!("cgroups: cannot read stats: {e}"),
    }
    if let Err(e) = sandbox.teardown() {
        tracing::warn!("cgroups: teardown incomplete: {e}");
    }
}

/// CPU time of the whole process so far (joined threads included).
fn process_cpu_time() -> std::time::Duration {
    // SAFETY: getrusage writes into the zeroed rusage we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        if libc::getrusage(libc::RUSAGE_SELF, &mut usage) != 0 {
            return std::time::Duration::ZERO;
        }
        usage
    };
    let tv = |t: libc::timeval| std::time::Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
