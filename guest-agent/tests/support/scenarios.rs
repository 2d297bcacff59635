//! The agent's scenarios, run by the host-process tests
//! (`guest-agent/tests/host_process.rs`, agent as PID 1 of fresh
//! namespaces) and by the VM test (`tests/agent_vm.rs`, agent as the
//! guest's PID 1 under Corral on real KVM): the same client calls against
//! both. Each takes a connected client and the rootfs storage to use.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use corral_runtime::agent::{AgentClient, Code, Storage};

/// A minimal OCI spec running `args`.
pub fn spec(args: &[&str], terminal: bool, hostname: &str, cgroups_path: &str) -> Vec<u8> {
    let spec = serde_json::json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": args,
            "env": ["PATH=/bin", "TERM=xterm"],
            "cwd": "/",
            "noNewPrivileges": true,
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
        },
        "root": {"path": "rootfs"},
        "hostname": hostname,
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]}
        ],
        "linux": {
            "cgroupsPath": cgroups_path,
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/sys", "/proc/sysrq-trigger"],
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}]
        }
    });
    serde_json::to_vec(&spec).unwrap()
}

/// An OCI process object (for exec).
pub fn process(args: &[&str], terminal: bool) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "terminal": terminal,
        "user": {"uid": 0, "gid": 0},
        "args": args,
        "env": ["PATH=/bin"],
        "cwd": "/"
    }))
    .unwrap()
}

fn spec_plain() -> Vec<u8> {
    spec(&["true"], false, "b", "")
}

/// Reads a stream to its end.
pub async fn read_all(client: &AgentClient, id: &str, exec_id: &str, stderr: bool) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(chunk) = client
        .read_output(id, exec_id, stderr, 1 << 20)
        .await
        .unwrap()
    {
        out.extend_from_slice(&chunk);
    }
    out
}

/// Output byte-exact; exit codes, 128+signal; statuses kept until removal.
pub async fn output_and_exit_statuses(c: &AgentClient, storage: &Storage) {
    c.create_sandbox("sb", "").await.unwrap();
    let spec = self::spec(
        &["echo", "hello  world", "\u{e9}"],
        false,
        "box1",
        "/corral/basic",
    );
    let pid = c
        .create_container("echo", &spec, storage.clone())
        .await
        .unwrap();
    assert!(pid > 1);
    c.start("echo").await.unwrap();
    let out = read_all(c, "echo", "", false).await;
    assert_eq!(out, "hello  world \u{e9}\n".as_bytes());
    let exit = c.wait("echo", "").await.unwrap();
    assert_eq!((exit.status, exit.signaled), (0, false));
    // Kept until removed: a second wait gives the same.
    assert_eq!(c.wait("echo", "").await.unwrap().status, 0);
    c.remove("echo").await.unwrap();

    let spec = self::spec(
        &["sh", "-c", "echo to-stderr >&2; exit 3"],
        false,
        "box",
        "",
    );
    c.create_container("three", &spec, storage.clone())
        .await
        .unwrap();
    c.start("three").await.unwrap();
    assert_eq!(read_all(c, "three", "", true).await, b"to-stderr\n");
    assert_eq!(c.wait("three", "").await.unwrap().status, 3);
    c.remove("three").await.unwrap();

    let spec = self::spec(&["sleep", "1000"], false, "box", "");
    c.create_container("killed", &spec, storage.clone())
        .await
        .unwrap();
    c.start("killed").await.unwrap();
    c.signal("killed", "", 9, false).await.unwrap();
    let exit = c.wait("killed", "").await.unwrap();
    assert_eq!((exit.status, exit.signaled), (137, true));
    c.remove("killed").await.unwrap();
}

/// linux.sysctl is applied (kernel.shmmax is IPC-namespaced: this
/// container's only) and process.oomScoreAdj too.
pub async fn sysctl_and_oom_score(c: &AgentClient, storage: &Storage) {
    let mut s: serde_json::Value = serde_json::from_slice(&spec(
        &[
            "sh",
            "-c",
            "cat /proc/sys/kernel/shmmax /proc/self/oom_score_adj",
        ],
        false,
        "b",
        "",
    ))
    .unwrap();
    s["linux"]["sysctl"] = serde_json::json!({"kernel.shmmax": "123456789"});
    s["process"]["oomScoreAdj"] = serde_json::json!(500);
    c.create_container("sysctl", &serde_json::to_vec(&s).unwrap(), storage.clone())
        .await
        .unwrap();
    c.start("sysctl").await.unwrap();
    let out = String::from_utf8_lossy(&read_all(c, "sysctl", "", false).await).into_owned();
    assert_eq!(out, "123456789\n500\n");
    assert_eq!(c.wait("sysctl", "").await.unwrap().status, 0);
    c.remove("sysctl").await.unwrap();
    // A sysctl that does not exist fails the container, with its name.
    s["linux"]["sysctl"] = serde_json::json!({"kernel.no_such_knob": "1"});
    let err = c
        .create_container(
            "badsysctl",
            &serde_json::to_vec(&s).unwrap(),
            storage.clone(),
        )
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("sysctl kernel.no_such_knob=1"),
        "{err}"
    );
}

/// The container's process starts with no signal ignored or blocked (the
/// agent is Rust, which ignores SIGPIPE, and ignored signals survive exec).
pub async fn clean_signal_state(c: &AgentClient, storage: &Storage) {
    let spec = spec(
        &["grep", "-E", "^Sig(Blk|Ign)", "/proc/self/status"],
        false,
        "b",
        "",
    );
    c.create_container("sigs", &spec, storage.clone())
        .await
        .unwrap();
    c.start("sigs").await.unwrap();
    let out = String::from_utf8_lossy(&read_all(c, "sigs", "", false).await).into_owned();
    assert_eq!(
        out,
        "SigBlk:\t0000000000000000\nSigIgn:\t0000000000000000\n"
    );
    assert_eq!(c.wait("sigs", "").await.unwrap().status, 0);
    c.remove("sigs").await.unwrap();
}

/// 1 MiB through stdin and back, 10 MiB of stdout, checksum-exact.
pub async fn stdin_and_large_stdout(c: &AgentClient, storage: &Storage) {
    // 1 MiB through cat, written and read at the same time.
    let input: Vec<u8> = (0..(1u32 << 20))
        .map(|i| (i * 7 + i / 4096) as u8)
        .collect();
    c.create_container("cat", &spec(&["cat"], false, "b", ""), storage.clone())
        .await
        .unwrap();
    c.start("cat").await.unwrap();
    let writer = async {
        c.write_stdin("cat", "", &input).await.unwrap();
        c.close_stdin("cat", "").await.unwrap();
    };
    let (_, out) = tokio::join!(writer, read_all(c, "cat", "", false));
    assert_eq!(out.len(), input.len());
    assert!(out == input, "cat's output differs from its input");
    assert_eq!(c.wait("cat", "").await.unwrap().status, 0);
    c.remove("cat").await.unwrap();

    // 10 MiB of stdout.
    let size = 10 << 20;
    let script = format!("yes 0123456789abcdef | head -c {size}");
    c.create_container(
        "big",
        &spec(&["sh", "-c", &script], false, "b", ""),
        storage.clone(),
    )
    .await
    .unwrap();
    let started = Instant::now();
    c.start("big").await.unwrap();
    let out = read_all(c, "big", "", false).await;
    let took = started.elapsed();
    let expected: Vec<u8> = b"0123456789abcdef\n"
        .iter()
        .copied()
        .cycle()
        .take(size)
        .collect();
    assert_eq!(out.len(), size);
    assert!(out == expected, "10 MiB of stdout differ");
    assert_eq!(c.wait("big", "").await.unwrap().status, 0);
    println!(
        "stdout throughput (ReadStdout of up to 1 MiB per call): {:.0} MiB/s ({size} bytes in {took:?})",
        size as f64 / (1 << 20) as f64 / took.as_secs_f64()
    );
    c.remove("big").await.unwrap();
}

/// A pty from the container's devpts, resized.
pub async fn terminal(c: &AgentClient, storage: &Storage) {
    let spec = self::spec(&["sh", "-c", "read go; stty size; tty"], true, "b", "");
    c.create_container("tty", &spec, storage.clone())
        .await
        .unwrap();
    c.start("tty").await.unwrap();
    c.resize("tty", "", 33, 77).await.unwrap();
    c.write_stdin("tty", "", b"go\n").await.unwrap();
    let out = String::from_utf8_lossy(&read_all(c, "tty", "", false).await).into_owned();
    assert!(out.contains("33 77"), "{out:?}");
    assert!(out.contains("/dev/pts/0"), "{out:?}");
    assert_eq!(c.wait("tty", "").await.unwrap().status, 0);
    // No terminal: resizing is refused with a clear error.
    c.create_container("plain", &spec_plain(), storage.clone())
        .await
        .unwrap();
    let err = c.resize("plain", "", 10, 10).await.unwrap_err();
    assert_eq!(err.code(), Some(Code::INVALID_ARGUMENT), "{err}");
    c.remove("plain").await.unwrap();
    c.remove("tty").await.unwrap();
}

/// exec in a running container; a background child cannot hold output.
pub async fn exec_and_background_child(c: &AgentClient, storage: &Storage) {
    c.create_container(
        "svc",
        &spec(&["sleep", "1000"], false, "svc-host", ""),
        storage.clone(),
    )
    .await
    .unwrap();
    // Exec before start is refused.
    let err = c
        .exec("svc", "e0", &process(&["true"], false))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::FAILED_PRECONDITION), "{err}");
    c.start("svc").await.unwrap();
    c.exec(
        "svc",
        "e1",
        &process(&["sh", "-c", "hostname; cat /proc/1/cmdline; echo"], false),
    )
    .await
    .unwrap();
    let out = String::from_utf8_lossy(&read_all(c, "svc", "e1", false).await).into_owned();
    assert_eq!(
        out, "svc-host\nsleep\u{0}1000\u{0}\n",
        "exec sees the container's hostname and PID 1"
    );
    assert_eq!(c.wait("svc", "e1").await.unwrap().status, 0);

    // The exec'd shell leaves a child holding stdout open: the host's
    // read still ends, within the agent's drain grace (1 s here).
    c.exec(
        "svc",
        "e2",
        &process(&["sh", "-c", "sleep 1000 & echo exec-done"], false),
    )
    .await
    .unwrap();
    let waited = Instant::now();
    let exit = c.wait("svc", "e2").await.unwrap();
    assert_eq!(exit.status, 0);
    let out = read_all(c, "svc", "e2", false).await;
    assert_eq!(out, b"exec-done\n");
    assert!(
        waited.elapsed() < Duration::from_secs(5),
        "{:?}",
        waited.elapsed()
    );
    // A missing program is a clear error at exec.
    let err = c
        .exec("svc", "e3", &process(&["no-such-program"], false))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("\"no-such-program\" not found"),
        "{err}"
    );
    // maskedPaths and readonlyPaths hold (as containerd's default spec
    // asks): /proc/kcore reads as empty, /proc/sys refuses writes.
    c.exec(
        "svc",
        "e4",
        &process(
            &[
                "sh",
                "-c",
                "head -c 100 /proc/kcore 2>/dev/null | wc -c; \
                 echo 1 2>/dev/null > /proc/sys/kernel/ns_last_pid && echo writable || echo read-only",
            ],
            false,
        ),
    )
    .await
    .unwrap();
    let out = read_all(c, "svc", "e4", false).await;
    assert_eq!(String::from_utf8_lossy(&out), "0\nread-only\n");
    // `all` reaches the background sleep too.
    c.signal("svc", "", 9, true).await.unwrap();
    assert_eq!(c.wait("svc", "").await.unwrap().status, 137);
    c.remove("svc").await.unwrap();
}

/// Clear errors for bad requests; the agent keeps serving. `memory_controller`:
/// whether the agent's cgroup2 has one (a memory limit is then enforced, else
/// refused).
pub async fn bad_requests(c: &AgentClient, storage: &Storage, memory_controller: bool) {
    let err = c.start("nope").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NOT_FOUND), "{err}");
    assert!(err.to_string().contains("no container \"nope\""), "{err}");
    let err = c.wait("nope", "x").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NOT_FOUND), "{err}");
    let err = c
        .create_container("m", b"{not json", storage.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::INVALID_ARGUMENT), "{err}");
    assert!(err.to_string().contains("malformed OCI spec"), "{err}");
    let err = c
        .create_container("../x", &spec_plain(), storage.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(Code::INVALID_ARGUMENT), "{err}");
    let mut missing = corral_runtime::agent::Storage::new();
    missing.virtio_serial = "no-such-disk".into();
    let err = c
        .create_container("nodisk", &spec_plain(), missing)
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("no block device with virtio serial \"no-such-disk\""),
        "{err}"
    );
    // A memory limit is enforced where the agent's cgroup2 has the memory
    // controller (the guest) and refused, not dropped, where it has not
    // (this machine's controller-less cgroup2).
    let mut limited: serde_json::Value = serde_json::from_slice(&spec_plain()).unwrap();
    limited["linux"]["resources"] = serde_json::json!({"memory": {"limit": 67108864}});
    let limited = serde_json::to_vec(&limited).unwrap();
    let created = c
        .create_container("limited", &limited, storage.clone())
        .await;
    if memory_controller {
        created.unwrap();
        let stats = c.stats("limited").await.unwrap();
        assert_eq!(stats.memory.map(|m| m.1), Some(67108864), "{stats:?}");
        c.remove("limited").await.unwrap();
    } else {
        let err = created.unwrap_err();
        assert!(
            err.to_string()
                .contains("memory limit 67108864 cannot be enforced"),
            "{err}"
        );
    }
    // The systemd form of cgroupsPath is the host's business: the guest
    // uses cgroupfs and the container runs.
    let spec = self::spec(&["echo", "ok"], false, "b", "system.slice:corral:abc");
    c.create_container("sd", &spec, storage.clone())
        .await
        .unwrap();
    c.start("sd").await.unwrap();
    assert_eq!(read_all(c, "sd", "", false).await, b"ok\n");
    assert_eq!(c.wait("sd", "").await.unwrap().status, 0);
    let err = c.start("sd").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::FAILED_PRECONDITION), "{err}");
    let stats = c.stats("sd").await.unwrap();
    assert!(stats.cpu_usage_usec > 0, "{stats:?}");
    c.remove("sd").await.unwrap();
    let err = c.remove("sd").await.unwrap_err();
    assert_eq!(err.code(), Some(Code::NOT_FOUND), "{err}");
    c.check().await.unwrap();
}

/// Creates, runs and removes `n` containers in a row; returns the time.
pub async fn many_in_a_row(c: &AgentClient, storage: &Storage, n: usize) -> Duration {
    let started = Instant::now();
    for i in 0..n {
        let id = format!("row{i}");
        let spec = self::spec(&["sh", "-c", "echo $$"], false, "b", "");
        c.create_container(&id, &spec, storage.clone())
            .await
            .unwrap();
        c.start(&id).await.unwrap();
        assert_eq!(read_all(c, &id, "", false).await, b"1\n");
        assert_eq!(c.wait(&id, "").await.unwrap().status, 0);
        c.remove(&id).await.unwrap();
    }
    started.elapsed()
}

/// Median and max of `n` exec round trips (ExecProcess of `true`, then
/// WaitProcess) in a running container.
pub async fn exec_round_trips(
    c: &AgentClient,
    storage: &Storage,
    n: usize,
) -> (Duration, Duration) {
    c.create_container(
        "rt",
        &spec(&["sleep", "1000"], false, "b", ""),
        storage.clone(),
    )
    .await
    .unwrap();
    c.start("rt").await.unwrap();
    let mut times = Vec::new();
    for i in 0..n {
        let started = Instant::now();
        let id = format!("x{i}");
        c.exec("rt", &id, &process(&["true"], false)).await.unwrap();
        assert_eq!(c.wait("rt", &id).await.unwrap().status, 0);
        times.push(started.elapsed());
    }
    c.remove("rt").await.unwrap();
    times.sort();
    (times[times.len() / 2], times[times.len() - 1])
}

/// containerd's default capability set (as Docker's): CapBnd and CapEff
/// 00000000a80425fb for root; a non-root user gets its uid, gid, groups and
/// HOME (from the container's /etc/passwd) and no effective capabilities.
pub async fn users_and_capabilities(c: &AgentClient, storage: &Storage) {
    let default_caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
    ];
    let caps = serde_json::json!({
        "bounding": default_caps, "effective": default_caps, "permitted": default_caps
    });
    let mut root: serde_json::Value = serde_json::from_slice(&spec(
        &["sh", "-c", "grep -E '^Cap(Bnd|Eff)' /proc/self/status"],
        false,
        "b",
        "",
    ))
    .unwrap();
    root["process"]["capabilities"] = caps.clone();
    c.create_container("caps", &serde_json::to_vec(&root).unwrap(), storage.clone())
        .await
        .unwrap();
    c.start("caps").await.unwrap();
    let out = String::from_utf8_lossy(&read_all(c, "caps", "", false).await).into_owned();
    assert_eq!(
        out,
        "CapEff:\t00000000a80425fb\nCapBnd:\t00000000a80425fb\n"
    );
    assert_eq!(c.wait("caps", "").await.unwrap().status, 0);
    c.remove("caps").await.unwrap();

    let mut user: serde_json::Value = serde_json::from_slice(&spec(
        &[
            "sh",
            "-c",
            "id -u; id -g; id -G; echo $HOME; grep -E '^CapEff' /proc/self/status",
        ],
        false,
        "b",
        "",
    ))
    .unwrap();
    user["process"]["user"] =
        serde_json::json!({"uid": 1000, "gid": 1000, "additionalGids": [1000, 5]});
    user["process"]["capabilities"] = caps;
    c.create_container("user", &serde_json::to_vec(&user).unwrap(), storage.clone())
        .await
        .unwrap();
    c.start("user").await.unwrap();
    let out = String::from_utf8_lossy(&read_all(c, "user", "", false).await).into_owned();
    assert_eq!(
        out,
        "1000\n1000\n1000 5\n/home/user\nCapEff:\t0000000000000000\n"
    );
    assert_eq!(c.wait("user", "").await.unwrap().status, 0);
    c.remove("user").await.unwrap();
}
