//! The shim binary's three modes (containerd's shim v2 protocol):
//!
//! * `start`: find the pod's shim — a container whose annotations name a
//!   sandbox (`io.kubernetes.cri.sandbox-id` with container type
//!   `container`) joins that sandbox's shim and VM, any other container
//!   gets a new one — start it if needed, and print only its address once
//!   it listens.
//! * (no action): serve the task API on `-socket` until `Shutdown`.
//! * `delete`: remove what a dead pod shim left ([`super::leftovers`]).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::api::DeleteResponse;
use containerd_shim::asynchronous::{ExitSignal, Shim};
use containerd_shim::protos::protobuf::MessageField;
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, Error, Flags, StartOpts};
use tokio::io::AsyncReadExt;

use super::leftovers;
use super::task::uncancelled::Uncancelled;
use super::task::TaskService;

/// The annotation naming a container's pod sandbox (CRI).
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// The annotation saying whether a container is the sandbox or joins one.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";

/// See the module documentation.
pub struct CorralShim {
    namespace: String,
    socket: String,
    bundle: PathBuf,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for CorralShim {
    type T = Uncancelled<TaskService>;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        if args.action.is_empty() {
            super::logging::init(args.debug);
        }
        let bundle = if args.bundle.is_empty() {
            std::env::current_dir().unwrap_or_default()
        } else {
            PathBuf::from(&args.bundle)
        };
        CorralShim {
            namespace: args.namespace.clone(),
            socket: args.socket.clone(),
            bundle,
            exit: Arc::new(ExitSignal::default()),
        }
    }

    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        let grouping = grouping(&self.bundle.join("config.json"), &opts.id);
        let address = spawn(&opts, &grouping).await?;
        // containerd reconnects through the bundle's `address` file after
        // it restarts.
        std::fs::write(self.bundle.join("address"), &address)
            .map_err(|e| Error::Other(format!("cannot write the bundle's address file: {e}")))?;
        Ok(address)
    }

    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        // containerd logs this mode's stderr as warnings: say nothing.
        leftovers::cleanup(&self.bundle);
        Ok(DeleteResponse {
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: MessageField::some(super::task::timestamp(std::time::SystemTime::now())),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Uncancelled<TaskService> {
        super::logging::log_runtime_threads();
        Uncancelled(TaskService::new(
            &self.namespace,
            &self.socket,
            publisher,
            self.exit.clone(),
        ))
    }
}

/// The shim a container belongs to: its sandbox's, when its annotations
/// say it joins one, else its own.
pub fn grouping(config_json: &Path, id: &str) -> String {
    let annotations = std::fs::read(config_json)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v.get("annotations").cloned());
    let get = |k: &str| {
        annotations
            .as_ref()
            .and_then(|a| a.get(k))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    match (get(CONTAINER_TYPE).as_deref(), get(SANDBOX_ID)) {
        (Some("container"), Some(sandbox)) if !sandbox.is_empty() => sandbox,
        _ => id.to_string(),
    }
}

/// Starts the serving shim for `grouping` (or finds it running: the new
/// process then exits at once) and returns its address once it listens.
/// Written here rather than with containerd-shim's `spawn` because that
/// one parses the options on stdin as runc's and fails on Corral's
/// (`runtimeoptions.v1.Options`).
async fn spawn(opts: &StartOpts, grouping: &str) -> Result<String, Error> {
    let address = containerd_shim::socket_address(&opts.address, &opts.namespace, grouping);
    let exe = std::env::current_exe().map_err(|e| Error::Other(format!("current exe: {e}")))?;
    let mut cmd = tokio::process::Command::new(exe);
    cmd.stdout(Stdio::piped())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .args([
            "-namespace",
            &opts.namespace,
            "-id",
            &opts.id,
            "-address",
            &opts.address,
            "-socket",
            &address,
        ]);
    if opts.debug {
        cmd.arg("-debug");
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Other(format!("cannot start the shim: {e}")))?;
    // The child closes its stdout once it listens (or found the shim
    // already listening).
    if let Some(mut out) = child.stdout.take() {
        let mut sink = Vec::new();
        let _ = out.read_to_end(&mut sink).await;
    }
    Ok(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_join_their_sandbox_and_others_get_their_own_shim() {
        let dir = std::env::temp_dir().join(format!("corral-grouping-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("config.json");
        std::fs::write(&f, r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1","io.kubernetes.cri.container-type":"container"}}"#).unwrap();
        assert_eq!(grouping(&f, "c2"), "pod1");
        std::fs::write(&f, r#"{"annotations":{"io.kubernetes.cri.sandbox-id":"pod1","io.kubernetes.cri.container-type":"sandbox"}}"#).unwrap();
        assert_eq!(grouping(&f, "pod1"), "pod1");
        std::fs::write(&f, "{}").unwrap();
        assert_eq!(grouping(&f, "c3"), "c3");
        assert_eq!(grouping(&dir.join("missing"), "c4"), "c4");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
