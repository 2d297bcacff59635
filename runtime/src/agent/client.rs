//! [`AgentClient`]: the agent's API with deadlines and typed results.

use std::path::Path;
use std::time::Duration;

use corral_protocol::agent::*;
use corral_protocol::agent_ttrpc;
use corral_protocol::ttrpc::r#async::transport::Socket;
use corral_protocol::ttrpc::r#async::Client;
use corral_protocol::ttrpc::{self, context, Code};
use tokio::net::UnixStream;

use super::connect::{connect_hybrid_vsock, AgentConnectError};

/// The deadline of a control call unless set otherwise.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Creating a container mounts its rootfs and builds its namespaces.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest stdin chunk per call (ttrpc messages are at most 4 MiB).
const STDIN_CHUNK: usize = 1 << 20;

/// Why an agent call failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentCallError {
    /// The agent could not be reached.
    #[error(transparent)]
    Connect(#[from] AgentConnectError),
    /// The call failed (an error status from the agent, a deadline, or a
    /// broken connection).
    #[error("agent {call}: {}", describe(.source))]
    Call {
        /// The API call.
        call: &'static str,
        /// What ttrpc said.
        #[source]
        source: ttrpc::Error,
    },
    /// The agent speaks another protocol version.
    #[error(
        "the guest agent speaks protocol {agent}, this runtime {ours}: rebuild the guest image"
    )]
    Version {
        /// The agent's.
        agent: u32,
        /// Ours.
        ours: u32,
    },
}

fn describe(e: &ttrpc::Error) -> String {
    match e {
        ttrpc::Error::RpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

impl AgentCallError {
    /// The agent's status code, when the agent answered with an error.
    pub fn code(&self) -> Option<Code> {
        match self {
            AgentCallError::Call {
                source: ttrpc::Error::RpcStatus(s),
                ..
            } => Some(s.code()),
            _ => None,
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessExit {
    /// Exit code, or 128 + signal.
    pub status: i32,
    /// Killed by a signal.
    pub signaled: bool,
}

/// A container's usage, from the guest's cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// CPU time, µs.
    pub cpu_usage_usec: u64,
    /// User CPU time, µs.
    pub cpu_user_usec: u64,
    /// System CPU time, µs.
    pub cpu_system_usec: u64,
    /// memory.current and memory.max, if the guest has the controller.
    pub memory: Option<(u64, u64)>,
    /// pids.current.
    pub pids: u64,
}

/// See the module documentation.
#[derive(Clone)]
pub struct AgentClient {
    inner: agent_ttrpc::AgentClient,
    timeout: Duration,
}

fn ctx(timeout: Duration) -> context::Context {
    context::with_timeout(timeout.as_nanos().min(i64::MAX as u128) as i64)
}

/// No deadline: calls that wait for the guest's processes.
fn ctx_unbounded() -> context::Context {
    context::with_timeout(0)
}

impl AgentClient {
    /// Connects through the hybrid vsock socket and checks the protocol
    /// version, retrying until `deadline`.
    pub async fn connect(
        socket: &Path,
        port: u32,
        deadline: Duration,
    ) -> Result<Self, AgentCallError> {
        let started = tokio::time::Instant::now();
        loop {
            let stream =
                connect_hybrid_vsock(socket, port, deadline.saturating_sub(started.elapsed()))
                    .await?;
            let client = AgentClient::from_stream(stream);
            match client.check_with(Duration::from_secs(2)).await {
                Ok(()) => return Ok(client),
                Err(e @ AgentCallError::Version { .. }) => return Err(e),
                Err(e) if started.elapsed() >= deadline => return Err(e),
                Err(e) => {
                    tracing::debug!("agent not ready yet: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    /// A client on an already connected stream (no check).
    pub fn from_stream(stream: UnixStream) -> Self {
        AgentClient {
            inner: agent_ttrpc::AgentClient::new(Client::new(Socket::new(stream))),
            timeout: CALL_TIMEOUT,
        }
    }

    /// The deadline of control calls.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    async fn check_with(&self, timeout: Duration) -> Result<(), AgentCallError> {
        let r = self
            .inner
            .check(ctx(timeout), &CheckRequest::new())
            .await
            .map_err(|source| AgentCallError::Call {
                call: "Check",
                source,
            })?;
        if r.protocol_version != corral_protocol::PROTOCOL_VERSION {
            return Err(AgentCallError::Version {
                agent: r.protocol_version,
                ours: corral_protocol::PROTOCOL_VERSION,
            });
        }
        Ok(())
    }

    /// Liveness and protocol version.
    pub async fn check(&self) -> Result<(), AgentCallError> {
        self.check_with(self.timeout).await
    }

    /// Once per VM.
    pub async fn create_sandbox(
        &self,
        sandbox_id: &str,
        hostname: &str,
    ) -> Result<(), AgentCallError> {
        let mut r = CreateSandboxRequest::new();
        r.sandbox_id = sandbox_id.to_string();
        r.hostname = hostname.to_string();
        self.inner
            .create_sandbox(ctx(self.timeout), &r)
            .await
            .map_err(|source| AgentCallError::Call {
                call: "CreateSandbox",
                source,
            })?;
        Ok(())
    }

    /// Creates a container from an OCI spec (JSON) on `rootfs`; returns the
    /// guest pid of its init (not running until [`Self::start`]).
    pub async fn create_container(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: Storage,
    ) -> Result<u32, AgentCallError> {
        self.create_container_with_volumes(id, spec_json, rootfs, Vec::new())
            .await
    }

    /// Creates a container whose `volumes` (disks) are mounted into it.
    pub async fn create_container_with_volumes(
        &self,
        id: &str,
        spec_json: &[u8],
        rootfs: Storage,
        volumes: Vec<Volume>,
    ) -> Result<u32, AgentCallError> {
        let mut r = CreateContainerRequest::new();
        r.container_id = id.to_string();
        r.oci_spec_json = spec_json.to_vec();
        r.rootfs = protobuf::MessageField::some(rootfs);
        r.volumes = volumes;
        let reply = self
            .inner
            .create_container(ctx(CREATE_TIMEOUT.max(self.timeout)), &r)
            .await
            .map_err(|source| AgentCallError::Call {
                call: "CreateContainer",
                source,
            })?;
        Ok(reply.pid)
    }

    /// Starts a created container.
    pub async fn start(&self, id: &str) -> Result<(), AgentCallError> {
        let mut r = ContainerRequest::new();
        r.container_id = id.to_string();
        self.inner
            .start_container(ctx(self.timeout), &r)
            .await
            .map_err(|source| AgentCallError::Call {
                call: "StartContainer",
                source,
            })?;
        Ok(())
    }

    /// Runs an OCI process (JSON) in a running container.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
    ) -> Result<u32, AgentCallError> {
        let mut r = ExecProcessRequest::new();
        r.container_id = id.to_string();
        r.exec_id = exec_id.to_string();
        r.process_json = process_json.to_vec();
        let reply = self
            .inner
            .exec_process(ctx(CREATE_TIMEOUT.max(self.timeout)), &r)
            .await
            .map_err(|source| AgentCallError::Call {
                call: "ExecProcess",
                source,
            })?;
        Ok(reply.pid)
    }

    /// Signals a process (`exec_id` empty: the init), or with `all` every
    /// process of the container.
    pub async fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentCallError> {
        let mut r = SignalProcessRequest::new();
        r.container_id = id.to_string();
        r.exec_id = exec_id.to_string();
        r.signal = signal;
        r.all = all;
        self.inner
            .signal_process(ctx(self.timeout), &r)
            .await
            .map_err(|source| AgentCallError::Call {
                call: "SignalProcess",
                source,
            })?;
        Ok(())
    }

    /// Waits, without a deadline, for a process to end.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<ProcessExit, AgentCallError> {
        let r = process_request(id, exec_id);
        let reply = self
            .inner
            .wait_process(ctx_unbounded(), &r)
            .await
            .map_err(|source| AgentCallError::Call {
                call: "WaitProcess",
                source,
            })?;
        Ok(ProcessExit {
            status: reply.status,
            signaled: reply.signaled,
        })
    }

    /// Writes all of `data` to a process's stdin (waits while the process
    /// does not read: no deadline).
    pub async fn write_stdin(
        &self,
        id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<(), AgentCallError> {
        for chunk in data.chunks(STDIN_CHUNK) {
            let mut r = WriteStreamRequest::new();
            r.container_id = id.to_string();
            r.exec_id = exec_id.to_string();
            r.data = chunk.to_vec();
            self.inner
                .write_stdin(ctx_unbounded(), &r)
                .await
                .map_err(|source| AgentCallError::Call {
                    call: "WriteStdin",
                    source,
                })?;
        }
        Ok(())
    }

    /// Closes a process's stdin.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), AgentCallError> {
        self.inner
            .close_stdin(ctx(self.timeout), &process_request(id, exec_id))
            .await
            .map_err(|source| AgentCallError::Call {
                call: "CloseStdin",
                source,
            })?;
        Ok(())
    }

    /// Up to `len` bytes of stdout (or stderr), waiting without a deadline
    /// until there are some; `None` at the end.
    pub async fn read_output(
        &self,
        id: &str,
        exec_id: &str,
        stderr: bool,
        len: u32,
    ) -> Result<Option<Vec<u8>>, AgentCallError> {
        let mut r = ReadStreamRequest::new();
        r.container_id = id.to_string();
        r.exec_id = exec_id.to_string();
        r.len = len;
        let reply = if stderr {
            self.inner.read_stderr(ctx_unbounded(), &r).await
        } else {
            self.inner.read_stdout(ctx_unbounded(), &r).await
        }
        .map_err(|source| AgentCallError::Call {
            call: if stderr { "ReadStderr" } else { "ReadStdout" },
            source,
        })?;
        Ok(if reply.eof && reply.data.is_empty() {
            None
        } else {
            Some(reply.data)
        })
    }

    /// Resizes a process's terminal.
    pub async fn resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), AgentCallError> {
        let mut r = TtyWinResizeRequest::new();
        r.container_id = id.to_string();
        r.exec_id = exec_id.to_string();
        r.rows = rows;
        r.cols = cols;
        self.inner
            .tty_win_resize(ctx(self.timeout), &r)
            .await
            .map_err(|source| AgentCallError::Call {
                call: "TtyWinResize",
                source,
            })?;
        Ok(())
    }

    /// The container's cgroup usage in the guest.
    pub async fn stats(&self, id: &str) -> Result<Stats, AgentCallError> {
        let mut r = ContainerRequest::new();
        r.container_id = id.to_string();
        let s = self
            .inner
            .stats_container(ctx(self.timeout), &r)
            .await
            .map_err(|source| AgentCallError::Call {
                call: "StatsContainer",
                source,
            })?;
        Ok(Stats {
            cpu_usage_usec: s.cpu_usage_usec,
            cpu_user_usec: s.cpu_user_usec,
            cpu_system_usec: s.cpu_system_usec,
            memory: s.has_memory.then_some((s.memory_current, s.memory_max)),
            pids: s.pids_current,
        })
    }

    /// Removes a container (kills what is left).
    pub async fn remove(&self, id: &str) -> Result<(), AgentCallError> {
        let mut r = ContainerRequest::new();
        r.container_id = id.to_string();
        self.inner
            .remove_container(ctx(CREATE_TIMEOUT.max(self.timeout)), &r)
            .await
            .map_err(|source| AgentCallError::Call {
                call: "RemoveContainer",
                source,
            })?;
        Ok(())
    }

    /// Removes every container; with `power_off` the VM then powers off.
    pub async fn destroy_sandbox(&self, power_off: bool) -> Result<(), AgentCallError> {
        let mut r = DestroySandboxRequest::new();
        r.power_off = power_off;
        self.inner
            .destroy_sandbox(ctx(CREATE_TIMEOUT.max(self.timeout)), &r)
            .await
            .map_err(|source| AgentCallError::Call {
                call: "DestroySandbox",
                source,
            })?;
        Ok(())
    }
}

fn process_request(id: &str, exec_id: &str) -> ProcessRequest {
    let mut r = ProcessRequest::new();
    r.container_id = id.to_string();
    r.exec_id = exec_id.to_string();
    r
}
