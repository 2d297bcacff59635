//! `containerd-shim-corral-v2` against a real containerd (Debian's 1.6,
//! started by each test with private paths) driven by `ctr`.
//!
//! Here (PVM: Linux never reaches user space) the tests cover the shim's
//! own paths: `delete` on its own, and a `Create` whose guest cannot
//! answer (the test guest boots and powers off) failing with a clear
//! error and leaving nothing behind. The `l1_` tests need Linux user space
//! and the agent: [`lane_containerd_runs_pods_in_corral_vms`] runs them in
//! the nested lane's L1 (real KVM, pure cgroup v2), where a real guest
//! kernel boots the agent's initramfs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "shim/containerd.rs"]
mod containerd;
#[path = "../../guest-agent/tests/support/image.rs"]
mod image;
#[path = "../../tests/support/nested/mod.rs"]
mod nested;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use containerd::{busybox_tree, import_busybox_image, shim, Containerd, RUNTIME};

/// Runs the `l1_` tests inside L1.
#[test]
fn lane_containerd_runs_pods_in_corral_vms() {
    guest_kernel();
    initramfs();
    nested::run_own_tests_in_l1(
        "lane_containerd_runs_pods_in_corral_vms",
        &["l1_"],
        Duration::from_secs(900),
    );
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn build_script(script: &str, args: &[&str]) -> PathBuf {
    let out = Command::new("bash")
        .arg(repo().join(script))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "{script} failed");
    PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim(),
    )
}

fn guest_kernel() -> PathBuf {
    build_script("guest-kernel/build.sh", &["--variant", "default"]).join("vmlinux")
}

fn initramfs() -> PathBuf {
    build_script("rootfs/build.sh", &[])
}

/// The test guest (built as the root crate's build.rs builds it).
fn test_guest() -> PathBuf {
    let dir = repo().join("test-guest");
    let status = Command::new(env!("CARGO"))
        .current_dir(&dir)
        .args(["build", "--release", "--quiet", "--target-dir"])
        .arg(dir.join("target"))
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .unwrap();
    assert!(status.success(), "building the test guest failed");
    dir.join("target/release/corral-test-guest")
}

fn kvm() {
    assert!(
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok(),
        "/dev/kvm cannot be opened: these tests need KVM"
    );
}

/// Every process whose executable is the shim.
fn shim_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe"))
                .map(|p| p == shim())
                .unwrap_or(false)
        })
        .collect()
}

/// Waits up to 20 s for every shim process to exit; fails naming those
/// left, with containerd's log.
fn wait_shims_gone(cd: &Containerd) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !shim_pids().is_empty() {
        if Instant::now() > deadline {
            let left: Vec<String> = shim_pids()
                .iter()
                .map(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/cmdline"))
                        .unwrap_or_default()
                        .replace('\0', " ")
                })
                .collect();
            panic!("shims left: {left:?}\n{}", cd.log_tail());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cgroup_dirs_named(name: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                if e.file_name().to_string_lossy() == name {
                    found.push(e.path());
                }
                if d.components().count() < 8 {
                    stack.push(e.path());
                }
            }
        }
    }
    found
}

fn empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

// ------------------------------------------------------------ here (PVM)

#[test]
fn delete_without_a_pod_is_quick_idempotent_and_prints_a_response() {
    let bundle = std::env::temp_dir().join(format!("corral-shim-delete-{}", std::process::id()));
    std::fs::create_dir_all(&bundle).unwrap();
    for _ in 0..2 {
        let started = Instant::now();
        let out = Command::new(shim())
            .current_dir(&bundle)
            .env("TTRPC_ADDRESS", "/nonexistent.ttrpc")
            .args(["-namespace", "ns", "-id", "c1", "-address", "/nonexistent"])
            .arg("-bundle")
            .arg(&bundle)
            .arg("delete")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // A DeleteResponse: exit_status (field 2) = 137.
        assert!(
            out.stdout.windows(2).any(|w| w == [0x10, 137]),
            "{:?}",
            out.stdout
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    let _ = std::fs::remove_dir_all(&bundle);
}

#[test]
fn create_fails_cleanly_when_the_guest_cannot_answer() {
    kvm();
    let guest = test_guest();
    let cd = Containerd::start(
        "noagent",
        &format!(
            "kernel = \"{}\"\ninitrd = \"{}\"\nmemory_mib = 64\n",
            guest.display(),
            initramfs().display()
        ),
    );
    let rootfs = busybox_tree(&cd.dir);
    let before = shim_pids();
    let started = Instant::now();
    let out = cd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--rootfs",
        rootfs.to_str().unwrap(),
        "noagent1",
        "echo",
        "hi",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ctr run succeeded: {out:?}");
    assert!(
        stderr.contains("cannot start the pod VM")
            && stderr.contains("before its guest agent answered"),
        "{stderr}\n{}",
        cd.log_tail()
    );
    eprintln!(
        "Create failed in {:?}: {}",
        started.elapsed(),
        stderr.trim()
    );
    // Nothing left: no shim, no pod directory, no cgroup, no socket.
    let deadline = Instant::now() + Duration::from_secs(10);
    while shim_pids().len() > before.len() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(shim_pids(), before, "a shim process was left");
    assert!(empty_dir(&cd.pods_dir()), "pod directory left");
    assert!(
        cgroup_dirs_named("noagent1").is_empty(),
        "{:?}",
        cgroup_dirs_named("noagent1")
    );
    let _ = cd.ctr(&["container", "rm", "noagent1"]);
}

// ------------------------------------------------------------ in L1

/// A process's RSS and the RSS of its mappings of `guest_kib` (guest RAM).
fn rss_and_guest_kib(pid: u32, guest_kib: u64) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut total, mut guest, mut size) = (0, 0, 0);
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match (f.next(), f.next().and_then(|v| v.parse::<u64>().ok())) {
            (Some("Size:"), Some(v)) => size = v,
            (Some("Rss:"), Some(v)) => {
                total += v;
                // Guest RAM: the mapping(s) at least as large as the guest's
                // memory below the MMIO gap (no other mapping comes close).
                if size >= guest_kib {
                    guest += v;
                }
            }
            _ => {}
        }
    }
    (total, guest)
}

/// containerd's `Update` (what CRI sends on a resources change, as
/// LinuxResources JSON) straight to the task's shim, found by the bundle's
/// `address` file.
fn update_resources(cd: &Containerd, id: &str, json: &str) -> Result<(), String> {
    use containerd_shim::protos::api::UpdateTaskRequest;
    use containerd_shim::protos::protobuf::well_known_types::any::Any;
    use containerd_shim::protos::protobuf::MessageField;
    use containerd_shim::protos::shim_async::TaskClient;
    use containerd_shim::protos::ttrpc::{context, r#async::Client};
    let bundle = cd
        .dir
        .join("state/io.containerd.runtime.v2.task/corral")
        .join(id);
    let address = std::fs::read_to_string(bundle.join("address")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::connect(address.trim()).await.unwrap();
        let task = TaskClient::new(client);
        let mut any = Any::new();
        any.type_url = "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources".into();
        any.value = json.as_bytes().to_vec();
        let mut req = UpdateTaskRequest::new();
        req.id = id.to_string();
        req.resources = MessageField::some(any);
        task.update(context::with_timeout(10_000_000_000), &req)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
}

fn lane_containerd(name: &str) -> Containerd {
    assert!(
        nested::in_l1(),
        "Linux user space needs hardware KVM: run lane_containerd_runs_pods_in_corral_vms"
    );
    let cd = Containerd::start(
        name,
        &format!(
            "kernel = \"{}\"\ninitrd = \"{}\"\nlog_level = \"debug\"\n",
            guest_kernel().display(),
            initramfs().display()
        ),
    );
    import_busybox_image(&cd, IMAGE);
    // A test that failed earlier in this L1 may have left its shim.
    for pid in shim_pids() {
        // SAFETY: kill(2) by pid.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    cd
}

const IMAGE: &str = "corral.test/busybox:1";

#[test]
#[ignore = "needs Linux user space: lane_containerd_runs_pods_in_corral_vms runs it in L1"]
fn l1_ctr_run_prints_output_and_passes_the_exit_status() {
    let cd = lane_containerd("run");
    let started = Instant::now();
    let out = cd.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "r1",
        "echo",
        "hi",
    ]);
    eprintln!(
        "ctr run --rm echo hi: {:?} (emulated, not a performance figure)",
        started.elapsed()
    );
    assert_eq!(out.trim(), "hi");
    for line in cd
        .log()
        .lines()
        .filter(|l| l.contains("pod: ") || l.contains("container: "))
    {
        eprintln!("FIGURE (emulated) {line}");
    }
    let out = cd.ctr(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        IMAGE,
        "r2",
        "sh",
        "-c",
        "echo err >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("err"),
        "{out:?}"
    );
    // --rootfs (no snapshot): the directory is the rootfs.
    let tree = busybox_tree(&cd.dir.join("plain"));
    let out = cd.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--rootfs",
        tree.to_str().unwrap(),
        "r3",
        "cat",
        "/etc/passwd",
    ]);
    assert!(out.contains("root:x:0:0"), "{out}");
    // Every shim exited, and nothing is left in the pods directory.
    std::thread::sleep(Duration::from_millis(500));
    assert!(shim_pids().is_empty(), "shims left: {:?}", shim_pids());
    assert!(empty_dir(&cd.pods_dir()));
}

#[test]
#[ignore = "needs Linux user space: lane_containerd_runs_pods_in_corral_vms runs it in L1"]
fn l1_detached_task_exec_kill_delete_with_events_in_order_and_split_placement() {
    let cd = lane_containerd("detached");
    let mut events = cd
        .ctr_cmd(&["events"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // PID 1 of a PID namespace ignores signals it has no handler for, as
    // under runc: the init traps TERM.
    cd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        "--cpu-shares",
        "512",
        "--memory-limit",
        "134217728",
        IMAGE,
        "d1",
        "sh",
        "-c",
        "trap 'exit 143' TERM; while true; do sleep 1; done",
    ]);
    cd.wait_status("d1", "RUNNING", Duration::from_secs(30));
    let (pid, _) = cd.task("d1").unwrap();
    assert_eq!(shim_pids(), vec![pid], "the task pid is the shim's");

    // Placement: vCPU threads in the pod's cgroup from the spec
    // (/corral/d1, ctr's default cgroupsPath), everything else beside it.
    let mut vcpu = Vec::new();
    let mut other = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let tid = e.file_name().to_string_lossy().into_owned();
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        let cg = cg.trim().rsplit(':').next().unwrap_or("").to_string();
        if comm.trim().starts_with("vcpu") {
            vcpu.push((tid, comm.trim().to_string(), cg));
        } else {
            other.push((tid, comm.trim().to_string(), cg));
        }
    }
    eprintln!("vCPU threads: {vcpu:?}\nother threads: {other:?}");
    assert!(!vcpu.is_empty());
    assert!(
        vcpu.iter().all(|(_, _, cg)| cg.starts_with("/corral/d1")),
        "{vcpu:?}"
    );
    assert!(
        other
            .iter()
            .all(|(_, _, cg)| !vcpu.iter().any(|v| &v.2 == cg)),
        "a non-vCPU thread shares the vCPU cgroup: {other:?}"
    );
    assert!(other.iter().any(|(_, n, _)| n.starts_with("shim-tokio")));

    // Host memory of the idle pod's shim without the guest's RAM, and of
    // runc's shim for one idle container in the same containerd.
    let (rss, guest) = rss_and_guest_kib(pid, 64 << 10);
    eprintln!(
        "FIGURE idle pod shim ({}): RSS {} KiB, of which guest RAM {} KiB: {} KiB without it",
        shim().display(),
        rss,
        guest,
        rss - guest
    );
    let peer = cd.ctr(&[
        "run",
        "-d",
        "--runtime",
        "io.containerd.runc.v2",
        IMAGE,
        "runc1",
        "sleep",
        "1000",
    ]);
    if peer.status.success() {
        let runc_shim = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .find(|p| {
                std::fs::read_link(format!("/proc/{p}/exe"))
                    .map(|x| x.ends_with("containerd-shim-runc-v2"))
                    .unwrap_or(false)
            });
        if let Some(p) = runc_shim {
            eprintln!(
                "FIGURE idle runc shim (peer): RSS {} KiB",
                rss_and_guest_kib(p, u64::MAX).0
            );
        }
        let _ = cd.ctr(&["task", "kill", "-s", "KILL", "runc1"]);
        std::thread::sleep(Duration::from_millis(500));
        let _ = cd.ctr(&["task", "delete", "runc1"]);
        let _ = cd.ctr(&["container", "rm", "runc1"]);
    } else {
        eprintln!(
            "FIGURE runc peer could not run here: {}",
            String::from_utf8_lossy(&peer.stderr)
        );
    }
    let out = cd.ctr_ok(&["task", "exec", "--exec-id", "e1", "d1", "echo", "from-exec"]);
    assert_eq!(out.trim(), "from-exec");
    let out = cd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "e2",
        "d1",
        "sh",
        "-c",
        "exit 4",
    ]);
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    // Processes, stats from the guest agent, and a new CPU quota on the
    // pod's vCPU cgroup.
    let ps = cd.ctr_ok(&["task", "ps", "d1"]);
    assert!(ps.contains(&pid.to_string()), "{ps}");
    let metrics = cd.ctr_ok(&["task", "metrics", "d1"]);
    assert!(metrics.contains("pids.current"), "{metrics}");
    // (ctr 1.6 has no `task update`: the call containerd's CRI makes goes
    // straight to the shim's socket.)
    update_resources(&cd, "d1", r#"{"cpu":{"quota":50000,"period":100000}}"#).unwrap();
    // A memory change is refused (guest RAM is fixed at boot), not dropped.
    let refused = update_resources(&cd, "d1", r#"{"memory":{"limit":1073741824}}"#).unwrap_err();
    assert!(refused.contains("memory limit 1073741824"), "{refused}");
    let read = |f: &str| {
        std::fs::read_to_string(format!("/sys/fs/cgroup/corral/d1/{f}"))
            .unwrap()
            .trim()
            .to_string()
    };
    assert_eq!(read("vcpu/cpu.max"), "50000 100000");
    // Sized from the spec at boot: shares 512 → weight 20 on the vCPU
    // cgroup; the 128 MiB limit added to the 256 MiB guest, plus 64 MiB
    // for the VMM, on the pod.
    assert_eq!(read("vcpu/cpu.weight"), "20");
    assert_eq!(read("memory.max"), ((256u64 + 128 + 64) << 20).to_string());
    cd.ctr_ok(&["task", "kill", "-s", "TERM", "d1"]);
    cd.wait_status("d1", "STOPPED", Duration::from_secs(30));
    let out = cd.ctr_ok(&["task", "ls"]);
    assert!(out.contains("STOPPED"), "{out}");
    cd.ctr_ok(&["task", "delete", "d1"]);
    cd.ctr_ok(&["container", "rm", "d1"]);
    wait_shims_gone(&cd);
    assert!(
        cgroup_dirs_named("d1").is_empty(),
        "{:?}",
        cgroup_dirs_named("d1")
    );
    std::thread::sleep(Duration::from_millis(300));
    let _ = events.kill();
    let out = events.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let topics: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("/tasks/"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("/tasks/")))
        .collect();
    eprintln!("events: {topics:?}");
    let want = [
        "/tasks/create",
        "/tasks/start",
        "/tasks/exec-added",
        "/tasks/exec-started",
        "/tasks/exit",
        "/tasks/delete",
    ];
    let mut at = 0;
    for t in &topics {
        if at < want.len() && *t == want[at] {
            at += 1;
        }
    }
    assert_eq!(at, want.len(), "events out of order: {topics:?}");
    let last_exit = topics.iter().rposition(|t| *t == "/tasks/exit").unwrap();
    let last_delete = topics.iter().rposition(|t| *t == "/tasks/delete").unwrap();
    assert!(last_exit < last_delete, "{topics:?}");
}

#[test]
#[ignore = "needs Linux user space: lane_containerd_runs_pods_in_corral_vms runs it in L1"]
fn l1_two_containers_of_one_pod_share_one_shim_and_vm() {
    let cd = lane_containerd("pod");
    // `ctr run` of a pod member, annotated as CRI annotates it.
    let member = |mode: &str, kind: &str, id: &str, cmd: &[&str]| {
        let kind = format!("io.kubernetes.cri.container-type={kind}");
        let mut args = vec!["run", mode, "--runtime", RUNTIME, "--annotation", &kind];
        args.extend(["--annotation", "io.kubernetes.cri.sandbox-id=p1", IMAGE, id]);
        args.extend(cmd);
        cd.ctr_ok(&args);
    };
    member("-d", "sandbox", "p1", &["sleep", "1000"]);
    member("-d", "container", "c2", &["sleep", "1000"]);
    cd.wait_status("c2", "RUNNING", Duration::from_secs(30));
    assert_eq!(shim_pids().len(), 1, "one shim for the pod");
    let (p1, _) = cd.task("p1").unwrap();
    let (c2, _) = cd.task("c2").unwrap();
    assert_eq!(p1, c2);
    // One VM: both containers see the same kernel boot id.
    let boot_id = |exec: &str, id: &str| {
        cd.ctr_ok(&[
            "task",
            "exec",
            "--exec-id",
            exec,
            id,
            "cat",
            "/proc/sys/kernel/random/boot_id",
        ])
    };
    assert_eq!(boot_id("b1", "p1"), boot_id("b2", "c2"));
    cd.ctr_ok(&["task", "kill", "-s", "KILL", "c2"]);
    cd.wait_status("c2", "STOPPED", Duration::from_secs(30));
    cd.ctr_ok(&["task", "delete", "c2"]);
    // The pod goes on.
    let out = cd.ctr_ok(&["task", "exec", "--exec-id", "b3", "p1", "echo", "still"]);
    assert_eq!(out.trim(), "still");
    assert_eq!(shim_pids().len(), 1);
    // A third container reuses the freed disk slot.
    member("--rm", "container", "c3", &["echo", "third"]);
    cd.ctr_ok(&["task", "kill", "-s", "KILL", "p1"]);
    cd.wait_status("p1", "STOPPED", Duration::from_secs(30));
    cd.ctr_ok(&["task", "delete", "p1"]);
    wait_shims_gone(&cd);
    assert!(empty_dir(&cd.pods_dir()));
}

#[test]
#[ignore = "needs Linux user space: lane_containerd_runs_pods_in_corral_vms runs it in L1"]
fn l1_a_killed_shim_leaves_nothing_behind_and_containerd_restarts_reconnect() {
    let mut cd = lane_containerd("kill9");
    let sockets_before = std::fs::read_dir("/run/containerd/s")
        .map(|d| d.count())
        .unwrap_or(0);
    cd.ctr_ok(&[
        "run",
        "-d",
        "--runtime",
        RUNTIME,
        IMAGE,
        "k1",
        "sleep",
        "1000",
    ]);
    cd.wait_status("k1", "RUNNING", Duration::from_secs(30));

    // containerd restarts while the task runs: it reconnects.
    cd.stop();
    cd.restart();
    cd.wait_status("k1", "RUNNING", Duration::from_secs(30));
    let out = cd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "x1",
        "k1",
        "echo",
        "reconnected",
    ]);
    assert_eq!(out.trim(), "reconnected");

    let (pid, _) = cd.task("k1").unwrap();
    assert!(!cgroup_dirs_named("k1").is_empty());
    // SAFETY: kill(2) of the shim by pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    // containerd sees the shim gone, runs its `delete` and drops the task.
    let deadline = Instant::now() + Duration::from_secs(30);
    while cd.task("k1").is_some() {
        assert!(Instant::now() < deadline, "the task outlived its shim");
        std::thread::sleep(Duration::from_millis(100));
    }
    cd.ctr_ok(&["container", "rm", "k1"]);
    wait_shims_gone(&cd);
    assert!(empty_dir(&cd.pods_dir()), "pod directory left");
    assert!(
        cgroup_dirs_named("k1").is_empty(),
        "{:?}",
        cgroup_dirs_named("k1")
    );
    // The namespace level of ctr's cgroupsPath (`/corral/k1`), which the
    // pod made, goes too.
    assert!(
        !Path::new("/sys/fs/cgroup/corral").exists(),
        "the pod's namespace cgroup was left"
    );
    let sockets_after = std::fs::read_dir("/run/containerd/s")
        .map(|d| d.count())
        .unwrap_or(0);
    assert!(sockets_after <= sockets_before, "shim socket left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains("/k1/rootfs"), "rootfs mount left");
}

#[test]
#[ignore = "needs Linux user space: lane_containerd_runs_pods_in_corral_vms runs it in L1"]
fn l1_a_terminal_gets_containerds_size() {
    let cd = lane_containerd("tty");
    // `script` gives ctr the terminal it asks for with -t; ctr resizes the
    // container's to its own once it started.
    let cmd = format!(
        "stty rows 33 cols 101; ctr --address {} -n corral run -t --rm --runtime {RUNTIME} {IMAGE} t1 sh -c 'sleep 2; stty size; tty'",
        cd.socket.display()
    );
    let out = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}\n{}", cd.log_tail());
    assert!(text.contains("33 101"), "{text}");
    assert!(text.contains("/dev/pts/0"), "{text}");
}

#[test]
#[ignore = "needs Linux user space: lane_containerd_runs_pods_in_corral_vms runs it in L1"]
fn l1_a_vm_that_ends_under_its_tasks_reports_them_exited() {
    let cd = lane_containerd("vmgone");
    cd.ctr_ok(&[
        "run",
        "-d",
        "--privileged",
        "--runtime",
        RUNTIME,
        IMAGE,
        "g1",
        "sleep",
        "1000",
    ]);
    cd.wait_status("g1", "RUNNING", Duration::from_secs(30));
    // The guest kernel panics under the running container (out of memory
    // with panic_on_oom, a privileged container's doing) and, with
    // `panic=1`, resets: the VM ends.
    let oom = cd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "oom",
        "g1",
        "sh",
        "-c",
        "echo 2 > /proc/sys/vm/panic_on_oom && mkdir -p /fill && mount -t tmpfs -o size=1g fill /fill && dd if=/dev/zero of=/fill/f bs=1M count=400",
    ]);
    eprintln!("exec during the panic: {oom:?}");
    cd.wait_status("g1", "STOPPED", Duration::from_secs(30));
    cd.ctr_ok(&["task", "delete", "g1"]);
    cd.ctr_ok(&["container", "rm", "g1"]);
    wait_shims_gone(&cd);
    assert!(empty_dir(&cd.pods_dir()));
    assert!(
        cgroup_dirs_named("g1").is_empty(),
        "{:?}",
        cgroup_dirs_named("g1")
    );
}

#[test]
#[ignore = "needs Linux user space: lane_containerd_runs_pods_in_corral_vms runs it in L1"]
fn l1_a_tap_in_the_pods_network_namespace_carries_the_guests_traffic() {
    let cd = lane_containerd("net");
    let ns = "corral-t1";
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
    containerd::run(Command::new("ip").args(["netns", "add", ns]));
    let ns_path = format!("network:/var/run/netns/{ns}");
    cd.ctr_ok(&[
        "run",
        "-d",
        "--privileged",
        "--runtime",
        RUNTIME,
        "--with-ns",
        &ns_path,
        "--annotation",
        "io.corral/tap=tap0",
        IMAGE,
        "n1",
        "sleep",
        "1000",
    ]);
    cd.wait_status("n1", "RUNNING", Duration::from_secs(30));
    containerd::run(Command::new("ip").args([
        "-n",
        ns,
        "addr",
        "add",
        "10.77.0.1/24",
        "dev",
        "tap0",
    ]));
    containerd::run(Command::new("ip").args(["-n", ns, "link", "set", "tap0", "up"]));
    let out = cd.ctr_ok(&[
        "task",
        "exec",
        "--exec-id",
        "ping",
        "n1",
        "sh",
        "-c",
        "ip addr add 10.77.0.2/24 dev eth0 && ip link set eth0 up && ping -c 2 -W 10 10.77.0.1",
    ]);
    assert!(out.contains("2 packets received"), "{out}");
    // The tap lives as long as the VM: a killed shim takes it along.
    let (pid, _) = cd.task("n1").unwrap();
    // SAFETY: kill(2) of the shim by pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(30);
    while cd.task("n1").is_some() {
        assert!(Instant::now() < deadline, "the task outlived its shim");
        std::thread::sleep(Duration::from_millis(100));
    }
    let links = containerd::run(Command::new("ip").args(["-n", ns, "link", "show"]));
    assert!(!links.contains("tap0"), "{links}");
    let _ = cd.ctr(&["container", "rm", "n1"]);
    let _ = Command::new("ip").args(["netns", "del", ns]).status();
}

#[test]
#[ignore = "needs Linux user space: lane_containerd_runs_pods_in_corral_vms runs it in L1"]
fn l1_a_binary_logger_gets_both_streams() {
    let cd = lane_containerd("logger");
    let out_dir = cd.dir.join("logs");
    std::fs::create_dir_all(&out_dir).unwrap();
    let logger = cd.dir.join("logger.sh");
    // containerd's binary logger contract: stdout on fd 3, stderr on fd 4,
    // fd 5 closed once ready; arguments from the URI's query.
    std::fs::write(
        &logger,
        "#!/bin/sh\n[ \"$1\" = dir ] || exit 9\nexec 5>&-\ncat <&3 > \"$2/$CONTAINER_NAMESPACE-$CONTAINER_ID.out\" &\ncat <&4 > \"$2/$CONTAINER_NAMESPACE-$CONTAINER_ID.err\"\nwait\n",
    )
    .unwrap();
    containerd::run(Command::new("chmod").arg("755").arg(&logger));
    let uri = format!("binary://{}?dir={}", logger.display(), out_dir.display());
    cd.ctr_ok(&[
        "run",
        "--rm",
        "--runtime",
        RUNTIME,
        "--log-uri",
        &uri,
        IMAGE,
        "lg1",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2",
    ]);
    let read = |ext: &str| {
        std::fs::read_to_string(out_dir.join(format!("corral-lg1.{ext}"))).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(read("out").contains("to-out") && read("err").contains("to-err")) {
        assert!(
            Instant::now() < deadline,
            "logger got out={:?} err={:?}",
            read("out"),
            read("err")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
