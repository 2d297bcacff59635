//! The agent's state: the containers of this VM and their processes, and
//! every operation the API offers on them.

use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use corral_protocol::agent::{Storage, Volume};
use nix::sched::CloneFlags;
use nix::sys::signal::Signal;
use oci_spec::runtime::{Mount, Process as OciProcess, Spec};

use crate::cgroup::{GuestCgroups, Usage};
use crate::child_config::{ChildConfig, ChildKind};
use crate::error::{check_id, AgentError};
use crate::process::Process;
use crate::reaper::Exit;
use crate::rootfs::Rootfs;
use crate::spawn::Spawner;

/// Where a container is in its life.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Created,
    Running,
}

struct Container {
    id: String,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    cgroup: PathBuf,
    rootfs: Mutex<Rootfs>,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// See the module documentation.
pub struct Sandbox {
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// One create or remove at a time (ids are checked and taken under it).
    lifecycle: tokio::sync::Mutex<()>,
    spawner: Spawner,
    cgroups: Arc<GuestCgroups>,
    state_dir: PathBuf,
    grace: Duration,
}

impl Sandbox {
    /// An empty sandbox.
    pub fn new(
        spawner: Spawner,
        cgroups: GuestCgroups,
        state_dir: PathBuf,
        grace: Duration,
    ) -> Self {
        Sandbox {
            containers: Mutex::new(HashMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            spawner,
            cgroups: Arc::new(cgroups),
            state_dir,
            grace,
        }
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, AgentError> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| AgentError::NoSuchContainer(id.to_string()))
    }

    fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, AgentError> {
        let c = self.container(id)?;
        if exec_id.is_empty() {
            return Ok(c.init.clone());
        }
        let found = lock(&c.execs).get(exec_id).cloned();
        found.ok_or_else(|| AgentError::NoSuchProcess {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        })
    }

    /// The ids of the containers.
    pub fn ids(&self) -> Vec<String> {
        lock(&self.containers).keys().cloned().collect()
    }

    /// Mounts the rootfs, creates the cgroup and the init process (set up,
    /// waiting for start); returns its pid.
    pub async fn create(
        &self,
        id: &str,
        spec_json: &[u8],
        storage: &Storage,
        volumes: &[Volume],
    ) -> Result<u32, AgentError> {
        check_id(id)?;
        for v in volumes {
            if !v.mount_point.starts_with('/') {
                return Err(AgentError::InvalidArgument(format!(
                    "volume mount point {:?} is not an absolute path",
                    v.mount_point
                )));
            }
        }
        let spec: Spec = serde_json::from_slice(spec_json).map_err(AgentError::MalformedSpec)?;
        let process = spec
            .process()
            .clone()
            .ok_or_else(|| AgentError::InvalidArgument("the OCI spec has no process".into()))?;
        let _one = self.lifecycle.lock().await;
        if lock(&self.containers).contains_key(id) {
            return Err(AgentError::AlreadyExists {
                kind: "container",
                id: id.to_string(),
            });
        }
        let linux = spec.linux().as_ref();
        if let Some(path) = linux.and_then(|l| l.cgroups_path().as_ref()) {
            // Both the cgroupfs and the systemd ("slice:prefix:name") forms
            // describe the host; in the guest it is always cgroupfs.
            tracing::debug!(container = id, cgroups_path = %path.display(), "host cgroup path not used in the guest");
        }
        // Off the runtime thread: waiting for the disk and mounting (an
        // ext4 journal replay) can take a while.
        let (state_dir, cid, storage) = (self.state_dir.clone(), id.to_string(), storage.clone());
        let vols = volumes.to_vec();
        let (mut rootfs, volume_mounts) = tokio::task::spawn_blocking(move || {
            let mut rootfs = Rootfs::mount(&state_dir, &cid, &storage)?;
            let mut mounts = Vec::new();
            for (i, v) in vols.iter().enumerate() {
                let storage = v.storage.clone().into_option().unwrap_or_default();
                match rootfs.mount_volume(i, &storage) {
                    Ok(at) => mounts.push(volume_bind(&at, &v.mount_point, storage.readonly)),
                    Err(e) => {
                        let _ = rootfs.unmount();
                        return Err(e);
                    }
                }
            }
            Ok((rootfs, mounts))
        })
        .await
        .map_err(|e| AgentError::sys("mount the rootfs", std::io::Error::other(e)))??;
        let cgroup = match self
            .cgroups
            .create(id, linux.and_then(|l| l.resources().as_ref()))
        {
            Ok(c) => c,
            Err(e) => {
                let _ = rootfs.unmount();
                return Err(e);
            }
        };
        let config = ChildConfig {
            container_id: id.to_string(),
            kind: ChildKind::Init {
                rootfs: rootfs.root.clone(),
                hostname: spec.hostname().clone(),
                mounts: spec
                    .mounts()
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .chain(volume_mounts)
                    .collect(),
                readonly_root: spec.root().as_ref().and_then(|r| r.readonly()) == Some(true),
                masked_paths: linux
                    .and_then(|l| l.masked_paths().clone())
                    .unwrap_or_default(),
                readonly_paths: linux
                    .and_then(|l| l.readonly_paths().clone())
                    .unwrap_or_default(),
                sysctl: linux
                    .and_then(|l| l.sysctl().clone())
                    .map(|m| m.into_iter().collect())
                    .unwrap_or_default(),
            },
            process,
        };
        let flags = CloneFlags::CLONE_NEWNS
            | CloneFlags::CLONE_NEWPID
            | CloneFlags::CLONE_NEWUTS
            | CloneFlags::CLONE_NEWIPC;
        let init = Process::create(
            &self.spawner,
            &self.cgroups,
            &cgroup,
            flags,
            None,
            &config,
            self.grace,
        )
        .await;
        let init = match init {
            Ok(p) => {
                let p = Arc::new(p);
                p.release_on_exit();
                p
            }
            Err(e) => {
                self.cleanup(&cgroup, &mut rootfs).await;
                return Err(e);
            }
        };
        let pid = init.pid as u32;
        lock(&self.containers).insert(
            id.to_string(),
            Arc::new(Container {
                id: id.to_string(),
                init,
                execs: Mutex::new(HashMap::new()),
                cgroup,
                rootfs: Mutex::new(rootfs),
                state: Mutex::new(State::Created),
            }),
        );
        tracing::info!(container = id, pid, "container created");
        Ok(pid)
    }

    async fn cleanup(&self, cgroup: &std::path::Path, rootfs: &mut Rootfs) {
        let dir = cgroup.to_path_buf();
        let cgroups = self.cgroups.clone();
        let removed = tokio::task::spawn_blocking(move || cgroups.kill_and_remove(&dir)).await;
        if let Ok(Err(e)) = removed {
            tracing::warn!("{e}");
        }
        if let Err(e) = rootfs.unmount() {
            tracing::warn!("{e}");
        }
    }

    /// Starts a created container's init.
    pub async fn start(&self, id: &str) -> Result<(), AgentError> {
        let c = self.container(id)?;
        {
            let mut state = lock(&c.state);
            if *state != State::Created {
                return Err(AgentError::WrongState {
                    id: id.to_string(),
                    state: "running",
                    wanted: "only a created container can start",
                });
            }
            *state = State::Running;
        }
        c.init.start(id).await
    }

    /// Runs another process in a running container.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        process_json: &[u8],
    ) -> Result<u32, AgentError> {
        check_id(exec_id)?;
        let c = self.container(id)?;
        if *lock(&c.state) != State::Running || c.init.exited().is_some() {
            return Err(AgentError::WrongState {
                id: id.to_string(),
                state: if c.init.exited().is_some() {
                    "stopped"
                } else {
                    "created"
                },
                wanted: "exec needs a running container",
            });
        }
        let process: OciProcess =
            serde_json::from_slice(process_json).map_err(AgentError::MalformedSpec)?;
        if lock(&c.execs).contains_key(exec_id) {
            return Err(AgentError::AlreadyExists {
                kind: "process",
                id: exec_id.to_string(),
            });
        }
        let pidns = format!("/proc/{}/ns/pid", c.init.pid);
        let pidns = File::open(&pidns).map_err(|e| AgentError::path("open", pidns, e))?;
        let config = ChildConfig {
            container_id: id.to_string(),
            kind: ChildKind::Exec {
                init_pid: c.init.pid,
            },
            process,
        };
        let mut p = Process::create(
            &self.spawner,
            &self.cgroups,
            &c.cgroup,
            CloneFlags::empty(),
            Some(pidns),
            &config,
            self.grace,
        )
        .await?;
        p.exec_id = exec_id.to_string();
        let p = Arc::new(p);
        p.release_on_exit();
        {
            let mut execs = lock(&c.execs);
            if execs.contains_key(exec_id) {
                let _ = p.signal(Signal::SIGKILL);
                return Err(AgentError::AlreadyExists {
                    kind: "process",
                    id: exec_id.to_string(),
                });
            }
            execs.insert(exec_id.to_string(), p.clone());
        }
        p.start(id).await?;
        Ok(p.pid as u32)
    }

    /// Sends a signal to one process, or with `all` to every process of the
    /// container.
    pub fn signal(
        &self,
        id: &str,
        exec_id: &str,
        signal: u32,
        all: bool,
    ) -> Result<(), AgentError> {
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| AgentError::InvalidArgument(format!("invalid signal {signal}")))?;
        let p = self.process(id, exec_id)?;
        if all {
            let c = self.container(id)?;
            for pid in self.cgroups.pids(&c.cgroup) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
            }
            return Ok(());
        }
        p.signal(sig)
    }

    /// Waits for a process to end.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Exit, AgentError> {
        let p = self.process(id, exec_id)?;
        let exit = p.wait().await;
        p.mark_wait_delivered();
        self.forget_if_collected(id, &p);
        Ok(exit)
    }

    /// An exec whose exit and output the host has all collected is
    /// forgotten (its id can be used again); the init stays until
    /// RemoveContainer.
    fn forget_if_collected(&self, id: &str, p: &Arc<Process>) {
        if p.exec_id.is_empty() || !p.fully_collected() {
            return;
        }
        if let Ok(c) = self.container(id) {
            let mut execs = lock(&c.execs);
            if execs.get(&p.exec_id).is_some_and(|e| Arc::ptr_eq(e, p)) {
                execs.remove(&p.exec_id);
                tracing::debug!(container = id, exec = %p.exec_id, "exec collected and forgotten");
            }
        }
    }

    /// Writes to a process's stdin.
    pub async fn write_stdin(
        &self,
        id: &str,
        exec_id: &str,
        data: &[u8],
    ) -> Result<usize, AgentError> {
        self.process(id, exec_id)?
            .stdin
            .write(data)
            .await
            .map_err(|e| AgentError::sys("write stdin", e))?;
        Ok(data.len())
    }

    /// Closes a process's stdin.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), AgentError> {
        self.process(id, exec_id)?
            .stdin
            .close()
            .await
            .map_err(|e| AgentError::sys("close stdin", e))
    }

    /// Reads a process's stdout (`stderr` false) or stderr.
    pub async fn read_output(
        &self,
        id: &str,
        exec_id: &str,
        stderr: bool,
        len: usize,
    ) -> Result<(Vec<u8>, bool), AgentError> {
        let p = self.process(id, exec_id)?;
        let read = match (stderr, &p.stderr) {
            (false, _) => p.stdout.read(len).await,
            (true, Some(err)) => err.read(len).await,
            // A terminal has everything on stdout.
            (true, None) => (Vec::new(), true),
        };
        if read.1 {
            self.forget_if_collected(id, &p);
        }
        Ok(read)
    }

    /// Resizes a process's terminal.
    pub fn resize(&self, id: &str, exec_id: &str, rows: u32, cols: u32) -> Result<(), AgentError> {
        let (rows, cols) = match (u16::try_from(rows), u16::try_from(cols)) {
            (Ok(r), Ok(c)) => (r, c),
            _ => {
                return Err(AgentError::InvalidArgument(format!(
                    "terminal size {rows}x{cols} is too large"
                )))
            }
        };
        self.process(id, exec_id)?.resize(rows, cols)
    }

    /// The container's cgroup usage.
    pub fn stats(&self, id: &str) -> Result<Usage, AgentError> {
        let c = self.container(id)?;
        self.cgroups.usage(&c.cgroup)
    }

    /// Kills what is left of a container, unmounts it, removes its cgroup
    /// and forgets it.
    pub async fn remove(&self, id: &str) -> Result<(), AgentError> {
        let _one = self.lifecycle.lock().await;
        let c = lock(&self.containers)
            .remove(id)
            .ok_or_else(|| AgentError::NoSuchContainer(id.to_string()))?;
        let dir = c.cgroup.clone();
        let cgroups = self.cgroups.clone();
        let removed = tokio::task::spawn_blocking(move || cgroups.kill_and_remove(&dir))
            .await
            .unwrap_or_else(|e| Err(AgentError::sys("cgroup removal", std::io::Error::other(e))));
        // Every process was killed: their exits arrive through the reaper.
        let _ = tokio::time::timeout(Duration::from_secs(10), c.init.wait()).await;
        let execs: Vec<Arc<Process>> = lock(&c.execs).values().cloned().collect();
        for p in execs {
            let _ = tokio::time::timeout(Duration::from_secs(10), p.wait()).await;
        }
        let unmounted = lock(&c.rootfs).unmount();
        tracing::info!(container = %c.id, "container removed");
        removed.and(unmounted)
    }

    /// Removes every container.
    pub async fn destroy(&self) -> Result<(), AgentError> {
        let mut first = None;
        for id in self.ids() {
            if let Err(e) = self.remove(&id).await {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

/// The bind mount that puts a volume mounted at `at` into the
/// container at `mount_point`.
fn volume_bind(at: &std::path::Path, mount_point: &str, readonly: bool) -> Mount {
    let mut options = vec!["rbind".to_string()];
    if readonly {
        options.push("ro".to_string());
    }
    let mut m = Mount::default();
    m.set_destination(mount_point.into());
    m.set_source(Some(at.to_path_buf()));
    m.set_typ(Some("bind".to_string()));
    m.set_options(Some(options));
    m
}
