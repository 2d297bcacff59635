//! The `Task` service's calls (see the parent module for the model).

use containerd_shim::protos::cgroups_v2::metrics::{CPUStat, MemoryStat, Metrics, PidsStat};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskStart,
};
use containerd_shim::protos::protobuf::Message;
use oci_spec::runtime::{LinuxResources, Spec};

use super::*;

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        if state.containers.contains_key(&req.id) {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = Spec::load(bundle.join("config.json")).map_err(|e| {
            err(
                Code::INVALID_ARGUMENT,
                format!("bundle {}: bad config.json: {e}", req.bundle),
            )
        })?;
        if let Some(resources) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) {
            refuse_cpuset(resources)?;
        }
        let root_path = spec.root().as_ref().map(|r| r.path().clone());
        let tree = RootTree::open(&bundle, &req.rootfs, root_path.as_deref())
            .await
            .map_err(|e| err(Code::INVALID_ARGUMENT, e.to_string()))?;
        let (pod, serial) = match state.pod.clone() {
            Some(pod) => {
                let serial = pod
                    .fill_slot(&req.id, tree.dir())
                    .await
                    .map_err(|e| err(Code::RESOURCE_EXHAUSTED, e.to_string()))?;
                (pod, serial)
            }
            None => match inner.boot(&mut state, &req, &spec, &tree).await {
                Ok(pod) => {
                    state.pod = Some(pod.clone());
                    (pod, super::super::disk::slot_serial(0))
                }
                Err(e) => {
                    state.create_failed = true;
                    if let Some(dir) = state.leftovers.dir.take() {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                    tracing::error!("create {}: {}", req.id, e);
                    return Err(e);
                }
            },
        };
        drop(tree);
        state.leftovers.link_bundle(&bundle);
        let mut guest_spec = spec.clone();
        if let Some(process) = guest_spec.process_mut() {
            process.set_terminal(Some(req.terminal));
        }
        let json = serde_json::to_vec(&guest_spec).map_err(|e| {
            err(
                Code::INVALID_ARGUMENT,
                format!("cannot encode the spec: {e}"),
            )
        })?;
        let readonly = spec.root().as_ref().and_then(|r| r.readonly()) == Some(true);
        let t0 = std::time::Instant::now();
        if let Err(e) = pod
            .agent
            .create_container(&req.id, &json, storage(serial, readonly))
            .await
        {
            pod.free_slot(&req.id);
            return Err(agent_err(e));
        }
        tracing::info!(
            "container: {} created by the agent in {} ms",
            req.id,
            t0.elapsed().as_millis()
        );
        let mut init = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        init.pid = std::process::id();
        if let Err(e) = start_io(&pod, &mut init, &req.id, "", &inner.namespace).await {
            let _ = pod.agent.remove(&req.id).await;
            pod.free_slot(&req.id);
            return Err(e);
        }
        let event = TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(io_event(&init)),
            pid: init.pid,
            ..Default::default()
        };
        let pid = init.pid;
        state.containers.insert(
            req.id.clone(),
            Container {
                bundle: req.bundle.clone(),
                init,
                execs: HashMap::new(),
            },
        );
        inner
            .publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        let pod = state.pod()?;
        let p = state.proc_mut(&req.id, &req.exec_id)?;
        if p.status != Status::CREATED {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!(
                    "process {:?} of {} was started already",
                    req.exec_id, req.id
                ),
            ));
        }
        let event: Box<dyn MessageDyn> = if req.exec_id.is_empty() {
            let t0 = std::time::Instant::now();
            pod.agent.start(&req.id).await.map_err(agent_err)?;
            tracing::info!(
                "container: {} started in {} ms",
                req.id,
                t0.elapsed().as_millis()
            );
            Box::new(TaskStart {
                container_id: req.id.clone(),
                pid: p.pid,
                ..Default::default()
            })
        } else {
            let spec = p.spec.take().unwrap_or_default();
            pod.agent
                .exec(&req.id, &req.exec_id, &spec)
                .await
                .map_err(agent_err)?;
            p.pid = std::process::id();
            start_io(&pod, p, &req.id, &req.exec_id, &inner.namespace).await?;
            Box::new(TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid: p.pid,
                ..Default::default()
            })
        };
        p.status = Status::RUNNING;
        let pid = p.pid;
        // Published under the lock, so the exit (which takes it) follows.
        let topic = if req.exec_id.is_empty() {
            topics::TASK_START_EVENT_TOPIC
        } else {
            topics::TASK_EXEC_STARTED_EVENT_TOPIC
        };
        inner.publish(topic, event).await;
        tokio::spawn(
            inner
                .clone()
                .watch_exit(pod, req.id.clone(), req.exec_id.clone()),
        );
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let mut rx = {
            let mut state = self.inner.state.lock().await;
            state.proc_mut(&req.id, &req.exec_id)?.exit.subscribe()
        };
        let exited = rx
            .wait_for(Option::is_some)
            .await
            .map_err(|_| err(Code::UNAVAILABLE, "the shim is shutting down"))?
            .unwrap_or(Exited {
                status: VM_GONE_STATUS,
                at: SystemTime::now(),
            });
        Ok(api::WaitResponse {
            exit_status: exited.status,
            exited_at: MessageField::some(timestamp(exited.at)),
            ..Default::default()
        })
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let mut state = self.inner.state.lock().await;
        let bundle = state
            .containers
            .get(&req.id)
            .map(|c| c.bundle.clone())
            .unwrap_or_default();
        let p = state.proc_mut(&req.id, &req.exec_id)?;
        let exited = p.exited();
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle,
            pid: p.pid,
            status: p.status.into(),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exit_status: exited.map_or(0, |e| e.status),
            exited_at: exited.map_or(MessageField::none(), |e| {
                MessageField::some(timestamp(e.at))
            }),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let (pod, done) = {
            let mut state = self.inner.state.lock().await;
            let pod = state.pod()?;
            let p = state.proc_mut(&req.id, &req.exec_id)?;
            (pod, p.exited().is_some())
        };
        if done && !req.all {
            return Err(err(Code::NOT_FOUND, "process already finished"));
        }
        match pod
            .agent
            .signal(&req.id, &req.exec_id, req.signal, req.all)
            .await
        {
            Ok(()) => Ok(api::Empty::default()),
            Err(e) if e.code() == Some(crate::agent::Code::NOT_FOUND) => {
                Err(err(Code::NOT_FOUND, "process already finished"))
            }
            Err(e) => Err(agent_err(e)),
        }
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        let pod = state.pod()?;
        let p = state.proc_mut(&req.id, &req.exec_id)?;
        if p.status == Status::RUNNING {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!(
                    "process {:?} of {} is running: kill it first",
                    req.exec_id, req.id
                ),
            ));
        }
        let exited = p.exited().unwrap_or(Exited {
            status: 0,
            at: SystemTime::now(),
        });
        let pid = p.pid;
        if req.exec_id.is_empty() {
            if let Err(e) = pod.agent.remove(&req.id).await {
                if e.code() != Some(crate::agent::Code::NOT_FOUND) {
                    tracing::warn!("delete {}: {e}", req.id);
                }
            }
            pod.free_slot(&req.id);
            state.containers.remove(&req.id);
        } else if let Some(c) = state.containers.get_mut(&req.id) {
            c.execs.remove(&req.exec_id);
        }
        let event = TaskDelete {
            container_id: req.id.clone(),
            pid,
            exit_status: exited.status,
            exited_at: MessageField::some(timestamp(exited.at)),
            id: req.exec_id.clone(),
            ..Default::default()
        };
        inner
            .publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(api::DeleteResponse {
            pid,
            exit_status: exited.status,
            exited_at: MessageField::some(timestamp(exited.at)),
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        let c = state
            .containers
            .get_mut(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        if c.init.status != Status::RUNNING {
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("container {} is not running", req.id),
            ));
        }
        if c.execs.contains_key(&req.exec_id) {
            return Err(err(
                Code::ALREADY_EXISTS,
                format!("exec {} already exists", req.exec_id),
            ));
        }
        let mut p = Proc::new(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let mut process: serde_json::Value = serde_json::from_slice(&req.spec.value)
            .map_err(|e| err(Code::INVALID_ARGUMENT, format!("exec process spec: {e}")))?;
        process["terminal"] = serde_json::Value::Bool(req.terminal);
        p.spec = Some(process.to_string().into_bytes());
        c.execs.insert(req.exec_id.clone(), p);
        let event = TaskExecAdded {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        inner
            .publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(event))
            .await;
        Ok(api::Empty::default())
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let pod = {
            let mut state = self.inner.state.lock().await;
            state.proc_mut(&req.id, &req.exec_id)?;
            state.pod()?
        };
        pod.agent
            .resize(&req.id, &req.exec_id, req.height, req.width)
            .await
            .map_err(agent_err)?;
        Ok(api::Empty::default())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let mut state = self.inner.state.lock().await;
        let p = state.proc_mut(&req.id, &req.exec_id)?;
        if req.stdin {
            p.close_stdin.notify_one();
        }
        Ok(api::Empty::default())
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let state = self.inner.state.lock().await;
        let c = state
            .containers
            .get(&req.id)
            .ok_or_else(|| not_found(&req.id, ""))?;
        let processes = std::iter::once(&c.init)
            .chain(c.execs.values())
            .filter(|p| p.status == Status::RUNNING)
            .map(|p| containerd_shim::protos::types::task::ProcessInfo {
                pid: p.pid,
                ..Default::default()
            })
            .collect();
        Ok(api::PidsResponse {
            processes,
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let pod = self.inner.state.lock().await.pod_of(&req.id)?;
        let s = pod.agent.stats(&req.id).await.map_err(agent_err)?;
        let mut m = Metrics::new();
        m.cpu = MessageField::some(CPUStat {
            usage_usec: s.cpu_usage_usec,
            user_usec: s.cpu_user_usec,
            system_usec: s.cpu_system_usec,
            ..Default::default()
        });
        m.pids = MessageField::some(PidsStat {
            current: s.pids,
            ..Default::default()
        });
        if let Some((usage, limit)) = s.memory {
            m.memory = MessageField::some(MemoryStat {
                usage,
                usage_limit: limit,
                ..Default::default()
            });
        }
        if let Some(host) = pod.host_stats() {
            tracing::debug!("stats {}: host side {host:?}", req.id);
        }
        let value = m
            .write_to_bytes()
            .map_err(|e| err(Code::INTERNAL, e.to_string()))?;
        Ok(api::StatsResponse {
            stats: MessageField::some(any("io.containerd.cgroups.v2.Metrics", value)),
            ..Default::default()
        })
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let pod = self.inner.state.lock().await.pod_of(&req.id)?;
        let resources: LinuxResources = serde_json::from_slice(&req.resources.value)
            .map_err(|e| err(Code::INVALID_ARGUMENT, format!("update resources: {e}")))?;
        let quota = resources
            .cpu()
            .as_ref()
            .map(|c| crate::cgroup::sizing::milli_cpus(c.quota(), c.period()))
            .filter(|&m| m > 0)
            .map(|m| m as f64 / 1000.0);
        if let Some(limit) = resources.memory().as_ref().and_then(|m| m.limit()) {
            // The guest's RAM (and with it the pod's host limit) is fixed at
            // boot, and the agent cannot change a container's limit yet:
            // refused, not dropped.
            return Err(err(
                Code::FAILED_PRECONDITION,
                format!("memory limit {limit}: a running pod's memory cannot be changed yet (its guest RAM is fixed at boot); recreate the container"),
            ));
        }
        refuse_cpuset(&resources)?;
        if quota.is_some() {
            pod.update_cpu_quota(quota)
                .map_err(|e| err(Code::FAILED_PRECONDITION, e.to_string()))?;
        }
        if let Some(shares) = resources.cpu().as_ref().and_then(|c| c.shares()) {
            pod.update_cpu_shares(Some(shares))
                .map_err(|e| err(Code::FAILED_PRECONDITION, e.to_string()))?;
        }
        Ok(api::Empty::default())
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        let inner = &self.inner;
        let mut state = inner.state.lock().await;
        if !state.containers.is_empty() && !state.create_failed {
            return Ok(api::Empty::default());
        }
        if let Some(pod) = state.pod.take() {
            pod.stop().await;
        }
        if let Some(dir) = state.leftovers.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        tracing::info!("shim: no task left, exiting");
        inner.exit.signal();
        Ok(api::Empty::default())
    }
}

/// A cpuset in the resources is refused, not dropped: the pod's vCPUs are
/// pinned by Corral's own rule (1:1 when their count equals the allowed
/// cpuset's size), and a per-container cpuset has no meaning outside the
/// guest yet.
fn refuse_cpuset(resources: &LinuxResources) -> ttrpc::Result<()> {
    let cpu = resources.cpu().as_ref();
    let asked = |v: Option<&String>| v.is_some_and(|s| !s.trim().is_empty());
    if let Some(c) = cpu {
        if asked(c.cpus().as_ref()) || asked(c.mems().as_ref()) {
            return Err(err(
                Code::INVALID_ARGUMENT,
                format!(
                    "cpuset cpus={:?} mems={:?}: Corral does not apply a container's cpuset yet; leave it out (the pod's vCPUs are pinned when their count matches the allowed CPUs)",
                    c.cpus().as_deref().unwrap_or(""),
                    c.mems().as_deref().unwrap_or("")
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpuset_is_refused_with_its_value() {
        let r: LinuxResources = serde_json::from_str(r#"{"cpu":{"cpus":"0-1"}}"#).unwrap();
        let e = refuse_cpuset(&r).unwrap_err();
        assert!(format!("{e:?}").contains("0-1"), "{e:?}");
        let ok: LinuxResources = serde_json::from_str(r#"{"cpu":{"shares":512}}"#).unwrap();
        assert!(refuse_cpuset(&ok).is_ok());
    }
}
