//! `corral run --image OCI` / `--rootfs DISK -- CMD…`: one container in a
//! micro-VM. The VM boots with the guest agent as PID 1 (`corral.agent`),
//! the root filesystem is a virtio-blk disk the agent mounts (serial
//! `corral-rootfs`; a read-only squashfs gets a tmpfs upper), the agent is
//! reached through a vsock device (one is added when none is given), the
//! container's stdout and stderr are streamed here, and the exit status is
//! the workload's. The guest console goes to `--console-file` (or nowhere).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use corral_runtime::agent::{AgentClient, Storage, Volume};
use corral_runtime::image::ResolvedUser;
use corral_runtime::pod::{container_spec, Pod, PodError};
use oci_spec::runtime::Spec;

use crate::device_args::VolumeArg;
use crate::tty::{RawMode, WindowChanges};
use corral_vmm::{ConsoleInput, DiskCache, DiskConfig, VmConfig, VsockConfig};

/// The virtio serial of the container's rootfs disk.
const ROOTFS_SERIAL: &str = "corral-rootfs";
/// How long the agent may take to answer after the VM starts.
const AGENT_DEADLINE: Duration = Duration::from_secs(180);
/// The container id (one per VM here).
const ID: &str = "main";

/// A container to run, checked before the VM exists.
pub struct Prepared {
    /// The OCI spec, as JSON.
    spec: Vec<u8>,
    /// The volumes, as the agent mounts them.
    volumes: Vec<Volume>,
    /// Forward this process's stdin to the container's.
    interactive: bool,
    /// The process has a terminal.
    terminal: bool,
    /// The vsock socket added for the agent (removed at the end).
    pub added_socket: Option<PathBuf>,
}

/// What runs: the root filesystem disk and the process.
pub struct ContainerInput {
    /// The root filesystem's disk image (ext4, squashfs or erofs).
    pub disk: PathBuf,
    /// Attach it read-only (a squashfs shared by runs).
    pub disk_read_only: bool,
    /// The process's arguments.
    pub command: Vec<String>,
    /// Its environment, later entries winning.
    pub env: Vec<String>,
    /// Its working directory (default `/`).
    pub cwd: Option<String>,
    /// Who it runs as (default root).
    pub user: ResolvedUser,
    /// Disks mounted into it.
    pub volumes: Vec<VolumeArg>,
}

/// Builds the container's spec and adds what it needs to the VM: the agent
/// on the command line, the rootfs disk, and a vsock device when there is
/// none.
pub fn prepare_vm(
    vm: &mut VmConfig,
    input: ContainerInput,
    interactive: bool,
    terminal: bool,
) -> anyhow::Result<Prepared> {
    // Stdin belongs to the container (with -i) or to nobody: never to the
    // guest's console.
    vm.console.input = ConsoleInput::None;
    let rootfs = &input.disk;
    std::fs::metadata(rootfs).with_context(|| format!("--rootfs {}", rootfs.display()))?;
    let mut spec = container_spec(&input.command, &input.env, terminal, "corral")?;
    set_cwd_and_user(&mut spec, input.cwd.as_deref(), &input.user)?;
    let spec = serde_json::to_vec(&spec).context("cannot encode the OCI spec")?;
    vm.cmdline.push_str(" corral.agent");
    vm.disks.push(DiskConfig {
        path: rootfs.to_path_buf(),
        read_only: input.disk_read_only,
        serial: Some(ROOTFS_SERIAL.to_string()),
        cache: DiskCache::default(),
    });
    let volumes = add_volumes(vm, &input.volumes)?;
    if vm.vsock.is_some() {
        return Ok(Prepared {
            spec,
            volumes,
            interactive,
            terminal,
            added_socket: None,
        });
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    // Sockets of killed runs (and their `_<port>` siblings) go first.
    let swept = corral_runtime::sweep::sweep_sockets(&dir, "corral-", ".vsock");
    for kept in &swept.kept {
        tracing::debug!("stale socket sweep: {}", kept.with_causes());
    }
    if !swept.removed.is_empty() {
        tracing::info!("removed stale sockets of killed runs: {:?}", swept.removed);
    }
    let socket = dir.join(format!("corral-{}.vsock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    vm.vsock = Some(VsockConfig {
        cid: 3,
        uds_path: socket.clone(),
    });
    Ok(Prepared {
        spec,
        volumes,
        interactive,
        terminal,
        added_socket: Some(socket),
    })
}

/// Attaches each volume's disk (serial `corral-volN`) and says where the
/// agent mounts it. A directory is refused: a volume is a disk image.
fn add_volumes(vm: &mut VmConfig, volumes: &[VolumeArg]) -> anyhow::Result<Vec<Volume>> {
    let mut out = Vec::new();
    for (i, v) in volumes.iter().enumerate() {
        let meta =
            std::fs::metadata(&v.host).with_context(|| format!("--volume {}", v.host.display()))?;
        if !meta.is_file() {
            bail!(
                "--volume {}: not a disk image file (give an ext4, squashfs or erofs image; mkfs.ext4 -d DIR makes one from a directory)",
                v.host.display()
            );
        }
        let serial = format!("corral-vol{i}");
        vm.disks.push(DiskConfig {
            path: v.host.clone(),
            read_only: v.read_only,
            serial: Some(serial.clone()),
            cache: DiskCache::default(),
        });
        out.push(corral_runtime::agent::volume(
            &serial,
            v.read_only,
            &v.guest,
        ));
    }
    Ok(out)
}

/// Sets the process's working directory and user in `spec`.
fn set_cwd_and_user(spec: &mut Spec, cwd: Option<&str>, user: &ResolvedUser) -> anyhow::Result<()> {
    let Some(process) = spec.process_mut() else {
        bail!("the container spec has no process");
    };
    if let Some(cwd) = cwd.filter(|c| !c.is_empty()) {
        if !cwd.starts_with('/') {
            bail!("working directory {cwd:?} is not absolute");
        }
        process.set_cwd(cwd.into());
    }
    let mut u = process.user().clone();
    u.set_uid(user.uid);
    u.set_gid(user.gid);
    u.set_additional_gids((!user.additional_gids.is_empty()).then(|| user.additional_gids.clone()));
    process.set_user(u);
    Ok(())
}

/// Runs the container in the started pod; returns its exit status. The VM
/// is powered off through the agent afterwards. With a terminal, window
/// changes (`winch`) resize the container's.
pub fn run(
    pod: &mut Pod,
    prepared: &Prepared,
    winch: Option<WindowChanges>,
    t0: std::time::Instant,
) -> anyhow::Result<i32> {
    let spec = &prepared.spec;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let agent = reach_agent(pod).await?;
        phase!(t0, "guest agent answered");
        let mut storage = Storage::new();
        storage.virtio_serial = ROOTFS_SERIAL.to_string();
        agent.create_sandbox("corral", "corral").await?;
        agent
            .create_container_with_volumes(ID, spec, storage, prepared.volumes.clone())
            .await?;
        if prepared.terminal {
            // Before start, so the process's first look at its size is right.
            resize(&agent).await;
        }
        phase!(t0, "container created");
        agent.start(ID).await?;
        phase!(t0, "container started");
        let (resizes, _raw) = match (prepared.terminal, winch) {
            (true, Some(winch)) => follow_window(&agent, winch, prepared.interactive).await?,
            _ => (None, None),
        };
        let stdin = async {
            if prepared.interactive {
                forward_stdin(&agent).await
            } else {
                agent.close_stdin(ID, "").await.map_err(Into::into)
            }
        };
        let stdin = async {
            // The container may end without reading all its input.
            if let Err(e) = stdin.await {
                tracing::debug!("stdin: {e:#}");
            }
            // Done with stdin is not done: the process's end is.
            std::future::pending::<()>().await
        };
        let stderr = async {
            // A terminal's output is all on stdout.
            if prepared.terminal {
                Ok(())
            } else {
                pump(&agent, true, std::io::stderr()).await
            }
        };
        let streams = async {
            tokio::join!(
                pump(&agent, false, std::io::stdout()),
                stderr,
                agent.wait(ID, ""),
            )
        };
        let resizing = async {
            if let Some(mut changes) = resizes {
                while changes.recv().await.is_some() {
                    resize(&agent).await;
                }
            }
            std::future::pending::<()>().await
        };
        // Stdin (a terminal never reaches its end) and resizing stop when
        // the process has exited and its output is drained.
        let (out, err, exit) = tokio::select! {
            all = streams => all,
            () = stdin => unreachable!("stdin forwarding never ends"),
            () = resizing => unreachable!("resizing never ends"),
        };
        out?;
        err?;
        let exit = exit?;
        phase!(t0, "container exited");
        agent.destroy_sandbox(true).await?;
        Ok(exit.status)
    })
}

/// Gives the container this terminal's size and follows its changes: the
/// receiver gets one message per change. With `interactive`, puts this
/// terminal in raw mode (restored when the returned guard drops).
async fn follow_window(
    agent: &AgentClient,
    winch: WindowChanges,
    interactive: bool,
) -> anyhow::Result<(Option<tokio::sync::mpsc::Receiver<()>>, Option<RawMode>)> {
    let raw = match interactive {
        true => RawMode::enter().context("cannot put the terminal in raw mode")?,
        false => None,
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    crate::tty::spawn_winch_thread(winch, tx).context("cannot start the window-size thread")?;
    resize(agent).await;
    Ok((Some(rx), raw))
}

/// Sends this terminal's size to the container's (when there is one).
async fn resize(agent: &AgentClient) {
    if let Some((rows, cols)) = crate::tty::window_size() {
        if let Err(e) = agent.resize(ID, "", rows.into(), cols.into()).await {
            tracing::debug!("resize: {e}");
        }
    }
}

/// Connects to the agent, giving up early if the VM ends first (an
/// initramfs without the agent powers off at once).
async fn reach_agent(pod: &Pod) -> anyhow::Result<AgentClient> {
    let socket = pod.vsock_socket().ok_or(PodError::NoVsock)?;
    match corral_runtime::pod::reach_agent(socket, &pod.shutdown_handle(), AGENT_DEADLINE).await {
        Ok(agent) => Ok(agent),
        Err(PodError::EndedEarly(exit)) => bail!(
            "the VM ended ({exit}) before its guest agent answered: boot an initramfs with the agent (rootfs/build.sh builds one)"
        ),
        Err(e) => Err(e).context("the guest agent did not answer"),
    }
}

/// Copies this process's stdin to the container's, then closes it. The
/// reads block, so they happen on a thread of their own ("corral-stdin");
/// it ends with stdin's end (or with the process).
async fn forward_stdin(agent: &AgentClient) -> anyhow::Result<()> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(4);
    std::thread::Builder::new()
        .name("corral-stdin".into())
        .spawn(move || {
            tracing::debug!(
                "corral-stdin thread has TID {}",
                corral_vmm::threads::gettid()
            );
            let mut stdin = std::io::stdin().lock();
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if tx.blocking_send(buf[..n].to_vec()).is_err() {
                            break;
                        }
                    }
                }
            }
        })
        .context("cannot start the stdin thread")?;
    while let Some(chunk) = rx.recv().await {
        agent.write_stdin(ID, "", &chunk).await?;
    }
    agent.close_stdin(ID, "").await?;
    Ok(())
}

/// Copies one output stream of the container to `to` until its end.
async fn pump(agent: &AgentClient, stderr: bool, mut to: impl Write) -> anyhow::Result<()> {
    while let Some(chunk) = agent.read_output(ID, "", stderr, 1 << 20).await? {
        // A closed stdout (`| head`) ends the copy, not the container.
        if to.write_all(&chunk).and_then(|()| to.flush()).is_err() {
            break;
        }
    }
    Ok(())
}
