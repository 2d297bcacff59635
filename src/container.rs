//! `corral run --rootfs IMAGE -- CMD…`: one container in a micro-VM. The VM
//! boots with the guest agent as PID 1 (`corral.agent`), the image is a
//! virtio-blk disk the agent mounts (serial `corral-rootfs`), the agent is
//! reached through a vsock device (one is added when none is given), the
//! container's stdout and stderr are streamed here, and the exit status is
//! the workload's. The guest console goes to `--console-file` (or nowhere).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use corral_runtime::agent::{AgentClient, Storage};
use corral_runtime::pod::{container_spec, Pod, PodError};
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
    /// Forward this process's stdin to the container's.
    interactive: bool,
    /// The vsock socket added for the agent (removed at the end).
    pub added_socket: Option<PathBuf>,
}

/// Builds the container's spec and adds what it needs to the VM: the agent
/// on the command line, the rootfs disk, and a vsock device when there is
/// none.
pub fn prepare_vm(
    vm: &mut VmConfig,
    rootfs: &Path,
    command: &[String],
    env: &[String],
    interactive: bool,
) -> anyhow::Result<Prepared> {
    // Stdin belongs to the container (with -i) or to nobody: never to the
    // guest's console.
    vm.console.input = ConsoleInput::None;
    std::fs::metadata(rootfs).with_context(|| format!("--rootfs {}", rootfs.display()))?;
    let spec = container_spec(command, env, false, "corral")?;
    let spec = serde_json::to_vec(&spec).context("cannot encode the OCI spec")?;
    vm.cmdline.push_str(" corral.agent");
    vm.disks.push(DiskConfig {
        path: rootfs.to_path_buf(),
        read_only: false,
        serial: Some(ROOTFS_SERIAL.to_string()),
        cache: DiskCache::default(),
    });
    if vm.vsock.is_some() {
        return Ok(Prepared {
            spec,
            interactive,
            added_socket: None,
        });
    }
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let socket = dir.join(format!("corral-{}.vsock", std::process::id()));
    let _ = std::fs::remove_file(&socket);
    vm.vsock = Some(VsockConfig {
        cid: 3,
        uds_path: socket.clone(),
    });
    Ok(Prepared {
        spec,
        interactive,
        added_socket: Some(socket),
    })
}

/// Runs the container in the started pod; returns its exit status. The VM
/// is powered off through the agent afterwards.
pub fn run(pod: &mut Pod, prepared: &Prepared) -> anyhow::Result<i32> {
    let spec = &prepared.spec;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let agent = reach_agent(pod).await?;
        let mut storage = Storage::new();
        storage.virtio_serial = ROOTFS_SERIAL.to_string();
        agent.create_sandbox("corral", "corral").await?;
        agent.create_container(ID, spec, storage).await?;
        agent.start(ID).await?;
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
        };
        let (out, err, exit, ()) = tokio::join!(
            pump(&agent, false, std::io::stdout()),
            pump(&agent, true, std::io::stderr()),
            agent.wait(ID, ""),
            stdin
        );
        out?;
        err?;
        let exit = exit?;
        agent.destroy_sandbox(true).await?;
        Ok(exit.status)
    })
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
