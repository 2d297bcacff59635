//! `corral run`'s cgroup options: the sandbox's cgroup configuration from
//! the command line, and its errors said in the options' terms. Placement
//! itself is the pod lifecycle's (`corral_runtime::pod`).

use anyhow::Context;
use corral_runtime::cgroup::{Blocker, CgroupConfig, CgroupError, Limit, PlacementMode};
use corral_runtime::pod::PodError;

/// `corral run`'s sandbox cgroups are `corral-<pid>`.
const SANDBOX_PREFIX: &str = "corral-";

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

/// The sandbox's cgroup configuration from the command line, if asked for.
pub fn config(args: &CgroupArgs) -> anyhow::Result<Option<CgroupConfig>> {
    let Some(parent) = &args.cgroup_parent else {
        return Ok(None);
    };
    let mut config = CgroupConfig::new(format!("{SANDBOX_PREFIX}{}", std::process::id()));
    config.parent = parent.clone();
    // What a killed `corral run` left beneath this parent goes first.
    config.stale_prefix = Some(SANDBOX_PREFIX.to_string());
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
    Ok(Some(config))
}

/// A pod that could not be made, in one line; a cgroup limit that cannot
/// be enforced is named by its option, with what to do.
pub fn pod_error(error: PodError, args: &CgroupArgs) -> anyhow::Error {
    match error {
        PodError::Cgroups(e) => create_error(e, args),
        other => anyhow::Error::new(other),
    }
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
        // The CLI sets no shares; said as the value for completeness.
        Limit::CpuShares(shares) => format!("CPU shares {shares}"),
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
