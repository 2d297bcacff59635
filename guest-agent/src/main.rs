//! corral-agent: Corral's guest agent. Runs in the micro-VM (as PID 1 or
//! started by the initramfs's init), serves the host's ttrpc API on vsock
//! port 1024 (or a Unix socket for tests), and runs OCI containers:
//! namespaces, the rootfs from a block device, a cgroup v2 per container,
//! stdio kept until the host reads it. Container processes are this same
//! binary re-executed (`__child`, see `child.rs`).

mod capabilities;
mod cgroup;
mod child;
mod child_config;
mod error;
mod mountopts;
mod passwd;
mod pid1;
mod process;
mod reaper;
mod rootfs;
mod sandbox;
mod securejoin;
mod server;
mod spawn;
mod stdio;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use corral_protocol::ttrpc::r#async::Server;

/// Command line.
#[derive(Parser, Debug)]
#[command(name = "corral-agent", version, about = "Corral's guest agent")]
struct Args {
    /// Where to serve the API: vsock://CID:PORT (-1: any CID) or
    /// unix:///path.
    #[arg(long, default_value = "vsock://-1:1024")]
    listen: String,
    /// The cgroup v2 hierarchy containers' cgroups go under (in
    /// `<root>/corral/<id>`).
    #[arg(long, default_value = "/sys/fs/cgroup")]
    cgroup_root: PathBuf,
    /// Where rootfs mounts are made.
    #[arg(long, default_value = "/run/corral/containers")]
    state_dir: PathBuf,
    /// Seconds output is still read after a process exits while something
    /// else keeps its stdout or stderr open.
    #[arg(long, default_value_t = 2.0)]
    drain_grace: f64,
}

/// A start-up failure, said in one line.
type Fatal = String;

fn main() {
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(child_config::CHILD_ARG))
    {
        child::main();
    }
    let pid1 = std::process::id() == 1;
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CORRAL_AGENT_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if pid1 {
        std::panic::set_hook(Box::new(|info| pid1::power_off(&format!("panic: {info}"))));
        pid1::mount_basics();
    }
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) if !pid1 => e.exit(),
        Err(e) => pid1::power_off(&format!("bad arguments: {}", e.to_string().trim())),
    };
    let result = run(args, pid1);
    if pid1 {
        // PID 1 must never return: the kernel would panic.
        pid1::power_off(&match result {
            Ok(()) => "the agent stopped".to_string(),
            Err(e) => e,
        });
    }
    if let Err(e) = result {
        eprintln!("corral-agent: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args, pid1: bool) -> Result<(), Fatal> {
    if !(0.0..=3600.0).contains(&args.drain_grace) {
        return Err(format!(
            "--drain-grace {} is not between 0 and 3600 seconds",
            args.drain_grace
        ));
    }
    raise_nofile();
    if !pid1 {
        // Orphans of container processes come to us, not to the host's
        // init, so the reaper sees them.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    runtime.block_on(serve(args, pid1))
}

/// Every container process costs the agent a few fds (pipes, pty): the
/// soft limit goes up to the hard one.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            tracing::warn!("cannot raise the fd limit to {hard}: {e}");
        }
    }
}

async fn serve(args: Args, pid1: bool) -> Result<(), Fatal> {
    let reaper = reaper::Reaper::start().map_err(|e| format!("cannot watch SIGCHLD: {e}"))?;
    let spawner =
        spawn::Spawner::start(reaper).map_err(|e| format!("cannot start the spawner: {e}"))?;
    let cgroups = cgroup::GuestCgroups::open(&args.cgroup_root).map_err(|e| e.to_string())?;
    std::fs::create_dir_all(&args.state_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.state_dir.display()))?;
    let sandbox = Arc::new(sandbox::Sandbox::new(
        spawner,
        cgroups,
        args.state_dir.clone(),
        Duration::from_secs_f64(args.drain_grace),
    ));
    let (power_tx, mut power_rx) = tokio::sync::mpsc::channel(1);
    let service = server::Service {
        sandbox,
        power_off: power_tx,
    };
    let services = corral_protocol::agent_ttrpc::create_agent(Arc::new(service));
    let mut server = Server::new()
        .bind(&args.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?
        .register_service(services);
    server
        .start()
        .await
        .map_err(|e| format!("cannot serve on {}: {e}", args.listen))?;
    // The console line the host and tests wait for, with the kernel's
    // uptime (boot-to-agent figure).
    let uptime = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    let line = format!(
        "corral-agent: listening on {}, uptime {} s",
        args.listen,
        uptime.split_whitespace().next().unwrap_or("?")
    );
    eprintln!("{line}");
    if pid1 {
        // In the kernel log too, timestamped on printk's clock.
        let _ = std::fs::write("/dev/kmsg", format!("{line}\n"));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| format!("cannot watch SIGTERM: {e}"))?;
    tokio::select! {
        _ = power_rx.recv() => {
            if pid1 {
                // Let the reply reach the host first.
                tokio::time::sleep(Duration::from_millis(50)).await;
                pid1::power_off("the host asked for a power-off");
            }
        }
        _ = term.recv() => {}
    }
    let _ = server.shutdown().await;
    Ok(())
}
