//! `corral`: boot a micro-VM in this process and stream its serial console,
//! or run one container in it (`--rootfs IMAGE -- CMD`).
//!
//! Exit status of `corral run`: 0 when the guest powers off; 3 when it asks
//! for a reset (Corral does not reboot guests); 4 when it crashes; 5 when a
//! vCPU fails; 130 when stopped by SIGINT/SIGTERM/SIGHUP; 1 when the VM
//! cannot be built; 2 for bad usage. With `--rootfs`, the container's own
//! exit status. Every failure prints one line on stderr.

/// Writes one line to stderr, ignoring failure: `eprintln!` would panic
/// when stderr is a closed pipe, and there is nowhere else to report to.
macro_rules! say_err {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod cgroups;
mod container;
mod device_args;
mod signals;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use corral_runtime::pod::{Pod, PodConfig};
use corral_vmm::{ConsoleConfig, ConsoleInput, ConsoleOutput, VmConfig, VmExit, DEFAULT_CMDLINE};

/// Corral: a container runtime with a built-in micro-VM monitor.
#[derive(Parser)]
#[command(name = "corral", version, about, long_about = None)]
struct Cli {
    /// Log filter for diagnostics on stderr (e.g. `info`, `corral_vmm=debug`);
    /// RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "warn", value_name = "FILTER")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a guest kernel and stream its serial console until it powers off.
    Run(RunArgs),
}

#[derive(clap::Args)]
struct RunArgs {
    /// Guest kernel: an ELF vmlinux (booted through its PVH note) or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Initrd / initramfs to load for the guest.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "ARGS", default_value = DEFAULT_CMDLINE)]
    cmdline: String,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 128, value_name = "MiB")]
    memory: u64,
    /// Write the guest console to this file instead of stdout.
    #[arg(long, value_name = "PATH")]
    console_file: Option<PathBuf>,
    /// Attach a virtio-blk disk backed by a raw file (repeatable).
    #[arg(long = "disk", value_name = "PATH[,ro][,serial=S][,cache=writeback|unsafe]", value_parser = device_args::parse_disk)]
    disks: Vec<corral_vmm::DiskConfig>,
    /// Attach a virtio-net interface on a host tap (repeatable).
    #[arg(long = "net", value_name = "TAP[,mac=MAC]", value_parser = device_args::parse_net)]
    nets: Vec<corral_vmm::NetConfig>,
    /// Attach virtio-vsock: guest CID and host Unix socket (Firecracker's
    /// hybrid vsock protocol; guest connections to host port P go to UDS_P).
    #[arg(long, value_name = "CID,UDS_PATH", value_parser = device_args::parse_vsock)]
    vsock: Option<corral_vmm::VsockConfig>,
    #[command(flatten)]
    cgroups: cgroups::CgroupArgs,
    /// Run a container: its root filesystem image (ext4, squashfs or
    /// erofs), which the guest agent mounts; the command goes after `--`.
    /// Boot the initramfs that has the agent (rootfs/build.sh).
    #[arg(long, value_name = "IMAGE")]
    rootfs: Option<PathBuf>,
    /// An environment variable of the container's process (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE", requires = "rootfs")]
    env: Vec<String>,
    /// Forward stdin to the container's process (without it, its stdin is
    /// closed at once).
    #[arg(short = 'i', long, requires = "rootfs")]
    interactive: bool,
    /// The container's command and its arguments (with --rootfs).
    #[arg(last = true, value_name = "CMD")]
    command: Vec<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = init_logging(&cli.log) {
        say_err!("corral: error: {e:#}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Run(args) => match run(args) {
            Ok(code) => code,
            Err(e) => {
                say_err!("corral: error: {e:#}");
                ExitCode::from(1)
            }
        },
    }
}

/// Logs to stderr, filtered by RUST_LOG if set, else by `--log`.
fn init_logging(log: &str) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var(EnvFilter::DEFAULT_ENV) {
        Ok(env) => EnvFilter::try_new(&env)
            .with_context(|| format!("RUST_LOG={env:?} is not a valid log filter"))?,
        Err(_) => EnvFilter::try_new(log)
            .with_context(|| format!("--log {log:?} is not a valid log filter (try `info`)"))?,
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Before any VMM thread exists, so that all of them inherit the mask
    // and termination signals reach only the signal thread.
    let termination = signals::block_termination_signals()?;
    let console = ConsoleConfig {
        output: args
            .console_file
            .clone()
            .map_or(ConsoleOutput::Stdout, ConsoleOutput::File),
        input: if stdin_is_interactive() {
            ConsoleInput::Stdin
        } else {
            ConsoleInput::None
        },
    };
    let mut config = VmConfig {
        vcpus: args.cpus,
        memory_mib: args.memory,
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        console,
        disks: args.disks,
        nets: args.nets,
        vsock: args.vsock,
    };
    let container_prepared = match &args.rootfs {
        Some(rootfs) => {
            if args.command.is_empty() {
                anyhow::bail!(
                    "--rootfs needs the container's command after `--` (e.g. -- echo hi)"
                );
            }
            if args.console_file.is_none() {
                // The container's output is this process's stdout.
                config.console.output = ConsoleOutput::File(PathBuf::from("/dev/null"));
            }
            Some(container::prepare_vm(
                &mut config,
                rootfs,
                &args.command,
                &args.env,
                args.interactive,
            )?)
        }
        None => {
            if !args.command.is_empty() {
                anyhow::bail!("a command after `--` runs in a container: give --rootfs IMAGE");
            }
            None
        }
    };
    let pod = PodConfig {
        vm: config,
        cgroup: cgroups::config(&args.cgroups)?,
    };
    // Between create and start every thread exists and is placed, and no
    // guest code has run.
    let mut pod = Pod::create(pod).map_err(|e| cgroups::pod_error(e, &args.cgroups))?;
    pod.start();
    signals::spawn_shutdown_thread(termination, pod.shutdown_handle())?;
    let mut container = container_prepared
        .as_ref()
        .map(|prepared| container::run(&mut pod, prepared));
    if let Some(Err(_)) = &container {
        match pod.wait_timeout(std::time::Duration::ZERO) {
            // Stopped by a signal, or the guest crashed: that is the reason
            // to report (130, 4, 5), not the broken agent connection.
            Some(VmExit::HostShutdown | VmExit::GuestCrash { .. } | VmExit::VcpuFailed { .. }) => {
                container = None
            }
            // Powered off or reset on its own: the container's error says
            // what it was waiting for.
            Some(_) => {}
            // The VM may still run: stop it before tearing down.
            None => pod.shutdown_handle().request(),
        }
    }
    let exit = pod.wait();
    if let Err(e) = pod.teardown() {
        tracing::warn!("cgroups: teardown incomplete: {e}");
    }
    if let Some(socket) = container_prepared
        .as_ref()
        .and_then(|p| p.added_socket.as_ref())
    {
        let _ = std::fs::remove_file(socket);
    }
    match container {
        Some(Ok(status)) => Ok(ExitCode::from(u8::try_from(status).unwrap_or(255))),
        Some(Err(e)) => Err(e),
        None => Ok(report(&exit)),
    }
}

/// Prints why the VM ended (unless it powered off) and picks the status.
fn report(exit: &VmExit) -> ExitCode {
    let code = match exit {
        VmExit::PowerOff => return ExitCode::SUCCESS,
        VmExit::Reset => 3,
        VmExit::GuestCrash { .. } => 4,
        VmExit::VcpuFailed { .. } => 5,
        VmExit::HostShutdown => 130,
    };
    say_err!("corral: {exit}");
    ExitCode::from(code)
}

/// Whether stdin is something a person or program types into (a terminal,
/// pipe or socket), as opposed to a file or /dev/null.
fn stdin_is_interactive() -> bool {
    let fd = std::io::stdin().as_raw_fd();
    // SAFETY: fstat writes into the zeroed stat we own; fd 0 may be closed,
    // which fstat reports as an error.
    let mode = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return false;
        }
        st.st_mode & libc::S_IFMT
    };
    // SAFETY: isatty only inspects the fd.
    let tty = unsafe { libc::isatty(fd) } == 1;
    tty || mode == libc::S_IFIFO || mode == libc::S_IFSOCK
}
