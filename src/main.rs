//! `corral`: boot a micro-VM in this process and stream its serial console,
//! or run one container in it (`--image OCI [-- CMD]` or
//! `--rootfs DISK -- CMD`). A build with the `embedded-guest` feature
//! carries its own kernel and initramfs, so `--kernel` is optional.
//!
//! Exit status of `corral run`: 0 when the guest powers off; 3 when it asks
//! for a reset (Corral does not reboot guests); 4 when it crashes; 5 when a
//! vCPU fails; 130 when stopped by SIGINT/SIGTERM/SIGHUP (128 + the signal
//! when a second one ends it without waiting); 1 when the VM
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

/// Logs how long after `corral run` began a phase ended (target
/// `corral::phase`, level info: `--log corral::phase=info` shows them).
macro_rules! phase {
    ($t0:expr, $what:expr) => {
        tracing::info!(target: "corral::phase", "{} at +{:.1} ms", $what, $t0.elapsed().as_secs_f64() * 1e3)
    };
}

mod cgroups;
mod container;
mod device_args;
mod filters;
mod guest;
mod image;
mod signals;
mod tty;

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
#[command(group = clap::ArgGroup::new("container").args(["rootfs", "image"]))]
struct RunArgs {
    /// Guest kernel: an ELF vmlinux (booted through its PVH note) or a
    /// bzImage [default: the guest embedded in this build, if any].
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Initrd / initramfs to load for the guest [default: the embedded
    /// initramfs, with --image/--rootfs or without --kernel].
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
    /// Seccomp filters on the VMM's threads: on (a forbidden system call
    /// ends the VM, exit status 7), log (allowed and logged by the kernel,
    /// to find what a filter lacks), or off (for debugging).
    #[arg(long, value_name = "on|log|off", default_value = "on")]
    seccomp: corral_vmm::SeccompPolicy,
    #[command(flatten)]
    cgroups: cgroups::CgroupArgs,
    /// Run a container: its root filesystem image (ext4, squashfs or
    /// erofs), which the guest agent mounts; the command goes after `--`.
    /// Boot the initramfs that has the agent (rootfs/build.sh).
    #[arg(long, value_name = "IMAGE")]
    rootfs: Option<PathBuf>,
    #[command(flatten)]
    image: image::ImageArgs,
    /// Mount a disk image file (ext4, squashfs or erofs) into the container
    /// at an absolute path, read-write unless `:ro` (repeatable).
    #[arg(short = 'v', long = "volume", value_name = "HOST:GUEST[:ro]",
          value_parser = device_args::parse_volume, requires = "container")]
    volumes: Vec<device_args::VolumeArg>,
    /// An environment variable of the container's process (repeatable).
    #[arg(
        short = 'e',
        long = "env",
        value_name = "KEY=VALUE",
        requires = "container"
    )]
    env: Vec<String>,
    /// Forward stdin to the container's process (without it, its stdin is
    /// closed at once).
    #[arg(short = 'i', long, requires = "container")]
    interactive: bool,
    /// Give the container's process a terminal (with -i, this terminal's
    /// keys go to it raw, and its size follows this window).
    #[arg(short = 't', long, requires = "container")]
    tty: bool,
    /// The container's command and its arguments (with --rootfs; with
    /// --image it replaces the image's CMD).
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
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours for a person at a terminal, not for a log file.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    Ok(())
}

fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let t0 = std::time::Instant::now();
    filters::install_control_plane(args.seccomp)?;
    let in_container = args.rootfs.is_some() || args.image.image.is_some();
    let (kernel, initrd) = guest::choose(args.kernel, args.initrd, in_container)?;
    // The image is converted first, while SIGINT/SIGTERM still end the
    // process at once (a conversion can take a while; its temporary disk
    // is swept by the next one); no thread exists yet.
    let input = match (&args.rootfs, &args.image.image) {
        (Some(rootfs), _) => {
            if args.command.is_empty() {
                anyhow::bail!(
                    "--rootfs needs the container's command after `--` (e.g. -- echo hi)"
                );
            }
            Some(container::ContainerInput {
                disk: rootfs.clone(),
                disk_read_only: false,
                command: args.command.clone(),
                env: args.env.clone(),
                cwd: args.image.workdir.clone(),
                user: image::numeric_user(args.image.user.as_deref())?,
                volumes: Vec::new(),
            })
        }
        (None, Some(_)) => Some(image::container_input(
            &args.image,
            &args.command,
            &args.env,
        )?),
        (None, None) => {
            if !args.command.is_empty() {
                anyhow::bail!(
                    "a command after `--` runs in a container: give --image PATH or --rootfs DISK"
                );
            }
            None
        }
    };
    // Before any VMM thread exists, so that all of them inherit the mask
    // and termination signals reach only the signal thread.
    let termination = signals::block_termination_signals()?;
    let winch = tty::block_window_changes()?;
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
        kernel,
        initrd,
        cmdline: args.cmdline,
        console,
        disks: args.disks,
        nets: args.nets,
        vsock: args.vsock,
        seccomp: args.seccomp,
    };
    let container_prepared = match input {
        Some(mut input) => {
            input.volumes = args.volumes.clone();
            if args.console_file.is_none() {
                // The container's output is this process's stdout.
                config.console.output = ConsoleOutput::File(PathBuf::from("/dev/null"));
            }
            Some(container::prepare_vm(
                &mut config,
                input,
                args.interactive,
                args.tty,
            )?)
        }
        None => None,
    };
    let pod = PodConfig {
        vm: config,
        cgroup: cgroups::config(&args.cgroups)?,
    };
    // Between create and start every thread exists and is placed, and no
    // guest code has run.
    phase!(t0, "rootfs disk ready");
    let mut pod = Pod::create(pod).map_err(|e| cgroups::pod_error(e, &args.cgroups))?;
    phase!(t0, "VM created and placed");
    pod.start();
    // What a second signal removes before exiting: taken now, once the
    // threads are placed.
    let emergency = signals::Emergency {
        cgroups: pod.sandbox().map(|s| s.teardown_handle()),
        sockets: pod.vsock_socket().map(PathBuf::from).into_iter().collect(),
    };
    let signal_thread =
        signals::spawn_shutdown_thread(termination, pod.shutdown_handle(), emergency)?;
    let mut container = container_prepared
        .as_ref()
        .map(|prepared| container::run(&mut pod, prepared, Some(winch), t0));
    if let Some(Err(_)) = &container {
        match pod.wait_timeout(std::time::Duration::ZERO) {
            // Stopped by a signal, the guest crashed or a VMM thread
            // failed: that is the reason to report (130, 4, 5, 6, 7), not
            // the broken agent connection.
            Some(
                VmExit::HostShutdown
                | VmExit::GuestCrash { .. }
                | VmExit::VcpuFailed { .. }
                | VmExit::WorkerFailed { .. }
                | VmExit::SeccompViolation { .. },
            ) => container = None,
            // Powered off or reset on its own: the container's error says
            // what it was waiting for.
            Some(_) => {}
            // The VM may still run: stop it before tearing down.
            None => pod.shutdown_handle().request(),
        }
    }
    let exit = pod.wait();
    phase!(t0, "VM ended");
    if pod.sandbox().is_some() {
        signal_thread.go_home();
    }
    if let Err(e) = pod.teardown() {
        tracing::warn!("cgroups: teardown incomplete: {e}");
    }
    phase!(t0, "VM torn down");
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
        VmExit::WorkerFailed { .. } => 6,
        VmExit::SeccompViolation { .. } => 7,
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
