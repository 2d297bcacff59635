//! containerd's task API (v2, as containerd 1.6 speaks it) on the pod VM.
//!
//! Processes: each container's init (exec id `""`) and its execs, with
//! containerd's states CREATED → RUNNING → STOPPED. Events are published in
//! the order containerd expects: `/tasks/create`, `/tasks/start`,
//! `/tasks/exec-added`, `/tasks/exec-started`, `/tasks/exit` (after the
//! state is STOPPED and the output is drained), `/tasks/delete`. Unknown
//! ids answer NOT_FOUND; Pause, Resume and Checkpoint are not supported.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use containerd_shim::api::{self, Status};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::protos::events::task::{TaskExit, TaskIO};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{MessageDyn, MessageField};
use containerd_shim::protos::shim_async::Task;
use containerd_shim::protos::topics;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::protos::ttrpc::{self, context::Context, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::TtrpcResult;
use tokio::sync::{watch, Mutex, Notify};

use super::config::{config_path_of_options, ShimConfig};
use super::disk::RootTree;
use super::leftovers::Leftovers;
use super::pod_vm::PodVm;
use super::stdio;
use crate::agent::{AgentCallError, Storage};

/// How long an exit waits for the process's output to drain.
const DRAIN: Duration = Duration::from_secs(5);
/// Exit status reported for processes whose VM ended under them.
const VM_GONE_STATUS: u32 = 255;

/// How a process ended.
#[derive(Debug, Clone, Copy)]
struct Exited {
    status: u32,
    at: SystemTime,
}

struct Proc {
    status: Status,
    pid: u32,
    stdin: String,
    stdout: String,
    stderr: String,
    terminal: bool,
    exit: watch::Sender<Option<Exited>>,
    close_stdin: Arc<Notify>,
    /// An exec's process spec (JSON), run at `Start`.
    spec: Option<Vec<u8>>,
    /// The output pumps, awaited before the exit is published.
    pumps: Vec<tokio::task::JoinHandle<()>>,
}

struct Container {
    bundle: String,
    init: Proc,
    execs: HashMap<String, Proc>,
}

#[derive(Default)]
struct State {
    pod: Option<Arc<PodVm>>,
    leftovers: Leftovers,
    containers: HashMap<String, Container>,
    /// The first `Create` failed: `Shutdown` ends the shim.
    create_failed: bool,
}

/// The task service of one shim (one pod).
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

pub(super) struct Inner {
    namespace: String,
    publisher: RemotePublisher,
    exit: Arc<ExitSignal>,
    socket: String,
    state: Mutex<State>,
}

fn err(code: Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn not_found(id: &str, exec_id: &str) -> ttrpc::Error {
    if exec_id.is_empty() {
        err(Code::NOT_FOUND, format!("container {id} not found"))
    } else {
        err(
            Code::NOT_FOUND,
            format!("process {exec_id} of container {id} not found"),
        )
    }
}

fn agent_err(e: AgentCallError) -> ttrpc::Error {
    let code = match e.code() {
        Some(crate::agent::Code::NOT_FOUND) => Code::NOT_FOUND,
        Some(crate::agent::Code::INVALID_ARGUMENT) => Code::INVALID_ARGUMENT,
        Some(crate::agent::Code::FAILED_PRECONDITION) => Code::FAILED_PRECONDITION,
        Some(crate::agent::Code::ALREADY_EXISTS) => Code::ALREADY_EXISTS,
        _ => Code::INTERNAL,
    };
    err(code, e.to_string())
}

/// A protobuf timestamp of `t`.
pub(super) fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

impl Proc {
    fn new(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Proc {
        Proc {
            status: Status::CREATED,
            pid: 0,
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
            terminal,
            exit: watch::channel(None).0,
            close_stdin: Arc::new(Notify::new()),
            spec: None,
            pumps: Vec::new(),
        }
    }

    fn exited(&self) -> Option<Exited> {
        *self.exit.borrow()
    }
}

impl State {
    fn proc_mut(&mut self, id: &str, exec_id: &str) -> ttrpc::Result<&mut Proc> {
        let c = self
            .containers
            .get_mut(id)
            .ok_or_else(|| not_found(id, ""))?;
        if exec_id.is_empty() {
            return Ok(&mut c.init);
        }
        c.execs
            .get_mut(exec_id)
            .ok_or_else(|| not_found(id, exec_id))
    }

    /// The pod of container `id` (NOT_FOUND for an unknown id).
    fn pod_of(&self, id: &str) -> ttrpc::Result<Arc<PodVm>> {
        if !self.containers.contains_key(id) {
            return Err(not_found(id, ""));
        }
        self.pod()
    }

    fn pod(&self) -> ttrpc::Result<Arc<PodVm>> {
        self.pod
            .clone()
            .ok_or_else(|| err(Code::FAILED_PRECONDITION, "the pod has no VM"))
    }
}

impl TaskService {
    /// The service for the shim listening on `socket`.
    pub fn new(
        namespace: &str,
        socket: &str,
        publisher: RemotePublisher,
        exit: Arc<ExitSignal>,
    ) -> TaskService {
        TaskService {
            inner: Arc::new(Inner {
                namespace: namespace.to_string(),
                publisher,
                exit,
                socket: socket.to_string(),
                state: Mutex::new(State::default()),
            }),
        }
    }
}

impl Inner {
    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!("cannot publish {topic}: {e}");
        }
    }

    /// Boots the pod for container `id` (first `Create`).
    async fn boot(
        self: &Arc<Self>,
        state: &mut State,
        req: &api::CreateTaskRequest,
        spec: &oci_spec::runtime::Spec,
        tree: &RootTree,
    ) -> ttrpc::Result<Arc<PodVm>> {
        let options = req.options.as_ref();
        let config_path = options.and_then(|o| config_path_of_options(&o.type_url, &o.value));
        let config = ShimConfig::load(config_path.as_deref())
            .map_err(|e| err(Code::INVALID_ARGUMENT, e.to_string()))?;
        let key = pod_key(&self.namespace, &req.id);
        let dir = config.state_dir.join(key);
        state.leftovers.shim_pid = std::process::id();
        state.leftovers.socket = Some(PathBuf::from(
            self.socket.strip_prefix("unix://").unwrap_or(&self.socket),
        ));
        let pod = PodVm::boot(
            &config,
            dir,
            &req.id,
            spec,
            tree.dir(),
            &mut state.leftovers,
        )
        .await
        .map_err(|e| err(Code::INTERNAL, format!("cannot start the pod VM: {e}")));
        let pod = Arc::new(pod?);
        // The VM may end on its own (guest power-off, crash): every
        // process still running is then reported as exited.
        let (watched, this) = (pod.clone(), self.clone());
        tokio::spawn(async move {
            let exit = watched.ended().await;
            tracing::info!("pod: the VM ended ({exit})");
            this.vm_gone().await;
        });
        Ok(pod)
    }

    /// Marks every unfinished process exited (the VM is gone).
    async fn vm_gone(self: Arc<Self>) {
        let mut events = Vec::new();
        {
            let mut state = self.state.lock().await;
            let now = SystemTime::now();
            for (id, c) in state.containers.iter_mut() {
                for (exec_id, p) in
                    std::iter::once((&String::new(), &mut c.init)).chain(c.execs.iter_mut())
                {
                    // The agent is gone: its streams end here, so the
                    // FIFOs close and containerd's readers see the end.
                    for pump in p.pumps.drain(..) {
                        pump.abort();
                    }
                    if p.exited().is_none() && p.status != Status::CREATED {
                        p.status = Status::STOPPED;
                        let exited = Exited {
                            status: VM_GONE_STATUS,
                            at: now,
                        };
                        p.exit.send_replace(Some(exited));
                        events.push(exit_event(id, exec_id, p.pid, exited));
                    }
                }
            }
        }
        for e in events {
            self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(e))
                .await;
        }
    }

    /// Runs after a process started: waits for its exit, drains its
    /// output, then marks it STOPPED and publishes the exit.
    async fn watch_exit(self: Arc<Self>, pod: Arc<PodVm>, id: String, exec_id: String) {
        let status = match pod.agent.wait(&id, &exec_id).await {
            Ok(exit) => u32::try_from(exit.status).unwrap_or(VM_GONE_STATUS),
            Err(e) => {
                tracing::warn!(id, exec_id, "wait: {e}");
                VM_GONE_STATUS
            }
        };
        let pumps = {
            let mut state = self.state.lock().await;
            match state.proc_mut(&id, &exec_id) {
                Ok(p) => std::mem::take(&mut p.pumps),
                Err(_) => Vec::new(),
            }
        };
        for pump in pumps {
            let _ = tokio::time::timeout(DRAIN, pump).await;
        }
        let event = {
            let mut state = self.state.lock().await;
            let Ok(p) = state.proc_mut(&id, &exec_id) else {
                return;
            };
            if p.exited().is_some() {
                return; // reported already (the VM ended)
            }
            let exited = Exited {
                status,
                at: SystemTime::now(),
            };
            p.status = Status::STOPPED;
            p.exit.send_replace(Some(exited));
            exit_event(&id, &exec_id, p.pid, exited)
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event))
            .await;
    }
}

fn exit_event(id: &str, exec_id: &str, pid: u32, e: Exited) -> TaskExit {
    TaskExit {
        container_id: id.to_string(),
        id: if exec_id.is_empty() {
            id.to_string()
        } else {
            exec_id.to_string()
        },
        pid,
        exit_status: e.status,
        exited_at: MessageField::some(timestamp(e.at)),
        ..Default::default()
    }
}

/// A short, fixed-length directory name for a pod (socket paths are
/// limited to 107 bytes).
pub fn pod_key(namespace: &str, id: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (namespace, id).hash(&mut h);
    format!("{:016x}", h.finish())
}

mod calls;
pub mod uncancelled;

/// Opens a started process's stdio and starts its pumps.
async fn start_io(
    pod: &PodVm,
    p: &mut Proc,
    id: &str,
    exec_id: &str,
    namespace: &str,
) -> ttrpc::Result<()> {
    let io_err = |e: stdio::ShimStdioError| err(Code::INVALID_ARGUMENT, e.to_string());
    let stderr = if p.terminal { "" } else { p.stderr.as_str() };
    let (out, errs) = stdio::open_outputs(&p.stdout, stderr, id, namespace)
        .await
        .map_err(io_err)?;
    let input = stdio::open_input(&p.stdin).map_err(io_err)?;
    let agent = &pod.agent;
    p.pumps.push(tokio::spawn(stdio::pump_output(
        agent.clone(),
        id.to_string(),
        exec_id.to_string(),
        false,
        out,
    )));
    if !p.terminal {
        p.pumps.push(tokio::spawn(stdio::pump_output(
            agent.clone(),
            id.to_string(),
            exec_id.to_string(),
            true,
            errs,
        )));
    }
    tokio::spawn(stdio::pump_input(
        agent.clone(),
        id.to_string(),
        exec_id.to_string(),
        input,
        p.close_stdin.clone(),
    ));
    Ok(())
}

fn storage(serial: String, readonly: bool) -> Storage {
    let mut s = Storage::new();
    s.virtio_serial = serial;
    s.readonly = readonly;
    s
}

fn io_event(p: &Proc) -> TaskIO {
    TaskIO {
        stdin: p.stdin.clone(),
        stdout: p.stdout.clone(),
        stderr: p.stderr.clone(),
        terminal: p.terminal,
        ..Default::default()
    }
}

fn any(type_url: &str, value: Vec<u8>) -> Any {
    let mut a = Any::new();
    a.type_url = type_url.to_string();
    a.value = value;
    a
}
