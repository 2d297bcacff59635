//! The ttrpc service: each API call turned into a [`Sandbox`] operation,
//! each error into a one-line status.

use std::sync::Arc;

use async_trait::async_trait;
use corral_protocol::agent::*;
use corral_protocol::agent_ttrpc::Agent;
use corral_protocol::ttrpc::{self, r#async::TtrpcContext};
use corral_protocol::PROTOCOL_VERSION;

use crate::error::AgentError;
use crate::sandbox::Sandbox;

/// See the module documentation.
pub struct Service {
    /// The containers.
    pub sandbox: Arc<Sandbox>,
    /// Told when DestroySandbox asks for a power-off.
    pub power_off: tokio::sync::mpsc::Sender<()>,
}

type Reply<T> = ttrpc::Result<T>;

/// Runs `work` as its own task: ttrpc drops a handler whose deadline
/// passed, and a create or remove cut in the middle would leave mounts and
/// cgroups behind; as a task it finishes either way.
async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = Result<T, AgentError>> + Send + 'static,
) -> Result<T, AgentError> {
    tokio::spawn(work)
        .await
        .unwrap_or_else(|e| Err(AgentError::sys("agent task", std::io::Error::other(e))))
}

fn empty() -> Reply<Empty> {
    Ok(Empty::new())
}

#[async_trait]
impl Agent for Service {
    async fn check(&self, _: &TtrpcContext, _: CheckRequest) -> Reply<CheckResponse> {
        let mut r = CheckResponse::new();
        r.protocol_version = PROTOCOL_VERSION;
        r.agent_version = env!("CARGO_PKG_VERSION").to_string();
        Ok(r)
    }

    async fn create_sandbox(&self, _: &TtrpcContext, req: CreateSandboxRequest) -> Reply<Empty> {
        if !req.hostname.is_empty() {
            nix::unistd::sethostname(&req.hostname)
                .map_err(|e| crate::error::AgentError::sys("sethostname", e))?;
        }
        tracing::info!(sandbox = %req.sandbox_id, "sandbox created");
        empty()
    }

    async fn create_container(
        &self,
        _: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> Reply<CreateContainerResponse> {
        let storage = req.rootfs.into_option().unwrap_or_default();
        let sb = self.sandbox.clone();
        let pid = to_completion(async move {
            sb.create(
                &req.container_id,
                &req.oci_spec_json,
                &storage,
                &req.volumes,
            )
            .await
        })
        .await?;
        let mut r = CreateContainerResponse::new();
        r.pid = pid;
        Ok(r)
    }

    async fn start_container(&self, _: &TtrpcContext, req: ContainerRequest) -> Reply<Empty> {
        let sb = self.sandbox.clone();
        to_completion(async move { sb.start(&req.container_id).await }).await?;
        empty()
    }

    async fn exec_process(
        &self,
        _: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> Reply<ExecProcessResponse> {
        let sb = self.sandbox.clone();
        let pid = to_completion(async move {
            sb.exec(&req.container_id, &req.exec_id, &req.process_json)
                .await
        })
        .await?;
        let mut r = ExecProcessResponse::new();
        r.pid = pid;
        Ok(r)
    }

    async fn signal_process(&self, _: &TtrpcContext, req: SignalProcessRequest) -> Reply<Empty> {
        self.sandbox
            .signal(&req.container_id, &req.exec_id, req.signal, req.all)?;
        empty()
    }

    async fn wait_process(
        &self,
        _: &TtrpcContext,
        req: ProcessRequest,
    ) -> Reply<WaitProcessResponse> {
        let exit = self.sandbox.wait(&req.container_id, &req.exec_id).await?;
        let mut r = WaitProcessResponse::new();
        r.status = exit.status;
        r.signaled = exit.signaled;
        Ok(r)
    }

    async fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> Reply<WriteStreamResponse> {
        let n = self
            .sandbox
            .write_stdin(&req.container_id, &req.exec_id, &req.data)
            .await?;
        let mut r = WriteStreamResponse::new();
        r.len = n as u32;
        Ok(r)
    }

    async fn close_stdin(&self, _: &TtrpcContext, req: ProcessRequest) -> Reply<Empty> {
        self.sandbox
            .close_stdin(&req.container_id, &req.exec_id)
            .await?;
        empty()
    }

    async fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> Reply<ReadStreamResponse> {
        self.read(req, false).await
    }

    async fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> Reply<ReadStreamResponse> {
        self.read(req, true).await
    }

    async fn tty_win_resize(&self, _: &TtrpcContext, req: TtyWinResizeRequest) -> Reply<Empty> {
        self.sandbox
            .resize(&req.container_id, &req.exec_id, req.rows, req.cols)?;
        empty()
    }

    async fn stats_container(
        &self,
        _: &TtrpcContext,
        req: ContainerRequest,
    ) -> Reply<StatsContainerResponse> {
        let u = self.sandbox.stats(&req.container_id)?;
        let mut r = StatsContainerResponse::new();
        r.cpu_usage_usec = u.cpu_usage_usec;
        r.cpu_user_usec = u.cpu_user_usec;
        r.cpu_system_usec = u.cpu_system_usec;
        if let Some((current, max)) = u.memory {
            r.has_memory = true;
            r.memory_current = current;
            r.memory_max = max;
        }
        r.pids_current = u.pids.unwrap_or(0);
        Ok(r)
    }

    async fn remove_container(&self, _: &TtrpcContext, req: ContainerRequest) -> Reply<Empty> {
        let sb = self.sandbox.clone();
        to_completion(async move { sb.remove(&req.container_id).await }).await?;
        empty()
    }

    async fn destroy_sandbox(&self, _: &TtrpcContext, req: DestroySandboxRequest) -> Reply<Empty> {
        let sb = self.sandbox.clone();
        let destroyed = to_completion(async move { sb.destroy().await }).await;
        // Powered off even if a container could not be cleaned up: the VM
        // is going away anyway.
        if req.power_off {
            let _ = self.power_off.send(()).await;
        }
        destroyed?;
        empty()
    }
}

impl Service {
    async fn read(&self, req: ReadStreamRequest, stderr: bool) -> Reply<ReadStreamResponse> {
        let (data, eof) = self
            .sandbox
            .read_output(&req.container_id, &req.exec_id, stderr, req.len as usize)
            .await?;
        let mut r = ReadStreamResponse::new();
        r.data = data;
        r.eof = eof;
        Ok(r)
    }
}
