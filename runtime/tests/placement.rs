//! Cgroup placement against this machine's real cgroups.
//!
//! Needs root and mounted cgroups (v1 controllers and a cgroup2 mount);
//! every test fails with a clear message when they are missing. Threads of
//! this test process stand in for the VMM's: "vcpu0", "vcpu1", … for vCPUs
//! and "vmm-io" for a worker. Tests move the whole process, so they hold
//! one lock.
//!
//! The `v2_` tests run here (on this machine's controller-less cgroup2) and
//! again, with the `pure_v2_` tests of `placement/pure_v2.rs`, inside the
//! nested lane's L1, a pure cgroup v2 host laid out as systemd does:
//! [`lane_pure_cgroup_v2`] runs them there.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::{Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use corral_runtime::cgroup::{
    Blocker, CgroupConfig, CgroupError, CgroupVersion, CpuStatSource, DeviceKind, DeviceRule,
    DriverKind, HierarchyPaths, PinDecision, PlacementMode, Sandbox,
};

#[path = "../../tests/support/nested/mod.rs"]
mod nested;
#[path = "placement/pure_v2.rs"]
mod pure_v2;
#[path = "placement/v2.rs"]
mod v2;

use v2::{unified, v2_cgroup_of_self};

/// Runs this file's cgroup v2 tests (`v2_…`, `pure_v2_…`) inside the nested
/// lane's L1, a pure cgroup v2 host (`tests/support/nested/init.sh`).
///
/// Holds the tests' lock: QEMU would otherwise start in whatever cgroups
/// (quota, cpuset, device rules) another test has just moved this process
/// into, and keep them.
#[test]
fn lane_pure_cgroup_v2() {
    let _guard = lock();
    nested::run_own_tests_in_l1(
        "lane_pure_cgroup_v2",
        &["pure_v2_", "v2_split_", "v2_sandbox_only_", "v2_devices_"],
        Duration::from_secs(600),
    );
}

static LOCK: Mutex<()> = Mutex::new(());

fn lock() -> MutexGuard<'static, ()> {
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------- helpers

enum Cmd {
    Spin(Duration, Sender<()>),
    Open(PathBuf, Sender<std::io::Result<()>>),
    Exit,
}

/// A parked, named thread standing in for a VMM thread.
struct FakeThread {
    tid: i32,
    tx: Sender<Cmd>,
    handle: Option<JoinHandle<()>>,
}

impl FakeThread {
    fn spawn(name: &str) -> FakeThread {
        let (tx, rx) = mpsc::channel::<Cmd>();
        let (ready_tx, ready_rx) = mpsc::channel();
        let handle = thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                ready_tx.send(own_tid()).unwrap();
                while let Ok(cmd) = rx.recv() {
                    match cmd {
                        Cmd::Spin(duration, done) => {
                            let start = Instant::now();
                            let mut x = 0u64;
                            while start.elapsed() < duration {
                                x = std::hint::black_box(x.wrapping_add(1));
                            }
                            done.send(()).unwrap();
                        }
                        Cmd::Open(path, done) => {
                            let opened = fs::OpenOptions::new().read(true).write(true).open(&path);
                            done.send(opened.map(drop)).unwrap();
                        }
                        Cmd::Exit => break,
                    }
                }
            })
            .unwrap();
        let tid = ready_rx.recv().unwrap();
        FakeThread {
            tid,
            tx,
            handle: Some(handle),
        }
    }

    fn spin(&self, duration: Duration) {
        let (done_tx, done_rx) = mpsc::channel();
        self.tx.send(Cmd::Spin(duration, done_tx)).unwrap();
        done_rx.recv().unwrap();
    }
}

impl FakeThread {
    /// Opens `path` read-write from this thread.
    fn open(&self, path: &Path) -> std::io::Result<()> {
        let (done_tx, done_rx) = mpsc::channel();
        self.tx
            .send(Cmd::Open(path.to_path_buf(), done_tx))
            .unwrap();
        done_rx.recv().unwrap()
    }
}

impl Drop for FakeThread {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Exit);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The calling thread's TID, from the `/proc/thread-self` link
/// (`<pid>/task/<tid>`).
fn own_tid() -> i32 {
    let link = fs::read_link("/proc/thread-self").unwrap();
    link.file_name().unwrap().to_str().unwrap().parse().unwrap()
}

fn threads() -> BTreeSet<i32> {
    fs::read_dir("/proc/self/task")
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect()
}

fn thread_alive(tid: i32) -> bool {
    Path::new(&format!("/proc/self/task/{tid}")).exists()
}

fn read_ids(file: &Path) -> BTreeSet<i32> {
    fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect()
}

fn read(file: &Path) -> String {
    fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
        .trim()
        .to_string()
}

fn self_cgroups() -> String {
    read(Path::new("/proc/self/cgroup"))
}

fn unique_id(tag: &str) -> String {
    format!("corral-test-{tag}-{}", std::process::id())
}

fn require_root() {
    let status = read(Path::new("/proc/self/status"));
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().nth(2) == Some("0"),
        "these tests move threads between cgroups and must run as root (effective {uid_line})"
    );
}

fn mounted_v1_controllers() -> BTreeSet<String> {
    let wanted = [
        "cpu", "cpuacct", "cpuset", "memory", "pids", "blkio", "devices", "freezer",
    ];
    let mut found = BTreeSet::new();
    for line in read(Path::new("/proc/self/mountinfo")).lines() {
        let Some((_, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = right.split_whitespace().collect();
        if fields.first() != Some(&"cgroup") {
            continue;
        }
        for opt in fields.get(2).unwrap_or(&"").split(',') {
            if wanted.contains(&opt) {
                found.insert(opt.to_string());
            }
        }
    }
    found
}

/// Where the v1 hierarchy carrying `controller` is mounted.
fn v1_mount_point(controller: &str) -> PathBuf {
    for line in read(Path::new("/proc/self/mountinfo")).lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        let fields: Vec<&str> = right.split_whitespace().collect();
        if fields.first() == Some(&"cgroup")
            && fields
                .get(2)
                .unwrap_or(&"")
                .split(',')
                .any(|o| o == controller)
        {
            return PathBuf::from(left.split_whitespace().nth(4).unwrap());
        }
    }
    panic!("the v1 {controller} hierarchy is not mounted");
}

fn require_v1() -> BTreeSet<String> {
    require_root();
    let controllers = mounted_v1_controllers();
    assert!(
        controllers.contains("cpu") && controllers.contains("cpuset"),
        "cgroup v1 cpu and cpuset hierarchies must be mounted for this test; found {controllers:?}"
    );
    controllers
}

fn require_v2() {
    require_root();
    let mountinfo = read(Path::new("/proc/self/mountinfo"));
    assert!(
        mountinfo.lines().any(|l| l.contains(" - cgroup2 ")),
        "a cgroup2 mount is required for this test (none in /proc/self/mountinfo)"
    );
}

fn config(tag: &str, version: CgroupVersion, mode: PlacementMode) -> CgroupConfig {
    let mut config = CgroupConfig::new(unique_id(tag));
    config.version = Some(version);
    config.mode = mode;
    config.pin_vcpus = false;
    config
}

/// Asserts teardown removed every created directory and restored the
/// process's cgroups.
fn assert_clean(created: &[PathBuf], origin: &str) {
    assert!(!created.is_empty());
    for dir in created {
        assert!(!dir.exists(), "{} survived teardown", dir.display());
    }
    assert_eq!(self_cgroups(), origin, "process not back in its cgroups");
}

fn all_created(sandbox: &Sandbox) -> Vec<PathBuf> {
    sandbox
        .paths()
        .hierarchies
        .iter()
        .flat_map(|h| h.created.clone())
        .collect()
}

/// Every live thread that is not a vCPU must be listed in `file`.
fn assert_others_listed(file: &Path, vcpus: &[i32]) {
    let listed = read_ids(file);
    for tid in threads() {
        if vcpus.contains(&tid) {
            assert!(!listed.contains(&tid), "vCPU {tid} in {}", file.display());
        } else if thread_alive(tid) {
            assert!(
                listed.contains(&tid),
                "thread {tid} not in {} ({listed:?})",
                file.display()
            );
        }
    }
}

fn hierarchy<'a>(paths: &'a [HierarchyPaths], controller: &str) -> &'a HierarchyPaths {
    paths
        .iter()
        .find(|h| h.name.split(',').any(|c| c == controller))
        .unwrap_or_else(|| panic!("no {controller} hierarchy in {paths:?}"))
}

// ---------------------------------------------------------------- v1

#[test]
fn v1_split_places_vcpus_in_sandbox_and_the_rest_in_overhead() {
    let _guard = lock();
    let controllers = require_v1();
    let origin = self_cgroups();
    let vcpus = [FakeThread::spawn("vcpu0"), FakeThread::spawn("vcpu1")];
    let io = FakeThread::spawn("vmm-io");
    let vcpu_tids: Vec<i32> = vcpus.iter().map(|t| t.tid).collect();

    let mut cfg = config("v1split", CgroupVersion::V1, PlacementMode::Split);
    cfg.cpu_quota = Some(1.5);
    cfg.memory_limit = Some(512 << 20);
    let mut sandbox = Sandbox::create(&cfg).unwrap();
    let report = sandbox.place(&vcpu_tids, &[io.tid]).unwrap();
    eprintln!(
        "v1 split: per-vCPU placement {:?} us, whole call {} us",
        report.vcpu_latencies_us(),
        report.total_us
    );

    let paths = sandbox.paths();
    let names: BTreeSet<String> = paths
        .hierarchies
        .iter()
        .flat_map(|h| h.name.split(',').map(str::to_string).collect::<Vec<_>>())
        .collect();
    assert_eq!(names, controllers, "every mounted v1 controller is used");
    for h in &paths.hierarchies {
        assert!(
            h.sandbox.starts_with(&h.origin),
            "{h:?} not beneath the process's cgroup"
        );
        let overhead = h.overhead.as_ref().unwrap();
        assert!(overhead.starts_with(&h.origin));
        assert_ne!(
            h.sandbox.parent(),
            overhead.parent(),
            "overhead is a sibling tree"
        );
        assert_eq!(
            read_ids(&h.sandbox.join("tasks")),
            vcpu_tids.iter().copied().collect(),
            "vCPU tasks in {}",
            h.name
        );
        assert_others_listed(&overhead.join("tasks"), &vcpu_tids);
    }

    let cpu = hierarchy(&paths.hierarchies, "cpu");
    assert_eq!(read(&cpu.sandbox.join("cpu.cfs_quota_us")), "150000");
    assert_eq!(read(&cpu.sandbox.join("cpu.cfs_period_us")), "100000");
    let overhead_cpu = cpu.overhead.as_ref().unwrap();
    assert_eq!(
        read(&overhead_cpu.join("cpu.cfs_quota_us")),
        "-1",
        "overhead is unlimited"
    );
    if controllers.contains("memory") {
        // v1 memcg charges the thread-group leader's memcg: the limit is
        // where the leader is, the overhead cgroup.
        let mem = hierarchy(&paths.hierarchies, "memory");
        let limit = read(&mem.overhead.as_ref().unwrap().join("memory.limit_in_bytes"));
        assert_eq!(limit, (512u64 << 20).to_string());
    }

    assert_eq!(report.vcpus.len(), 2);
    assert_eq!(report.vcpu_latencies_us().len(), 2);
    assert!(report.vcpus.iter().all(|v| v.latency_us < 1_000_000));
    assert_eq!(report.vcpus[1].tid, vcpu_tids[1]);
    assert!(report.other_tids.contains(&io.tid));
    assert!(report.other_tids.contains(&(std::process::id() as i32)));
    assert_eq!(report.driver.kind, DriverKind::Cgroupfs);
    assert_eq!(report.driver.fallback, None);
    assert_eq!(report.pinning, PinDecision::NotManaged);

    // Idempotent re-run.
    let again = sandbox.place(&vcpu_tids, &[io.tid]).unwrap();
    assert_eq!(again.vcpus.len(), 2);
    for h in &sandbox.paths().hierarchies {
        assert_eq!(
            read_ids(&h.sandbox.join("tasks")),
            vcpu_tids.iter().copied().collect()
        );
        assert_others_listed(&h.overhead.as_ref().unwrap().join("tasks"), &vcpu_tids);
    }

    vcpus[0].spin(Duration::from_millis(60));
    let stats = sandbox.stats().unwrap();
    assert_eq!(stats.cpu_source, CpuStatSource::CpuAcct);
    assert!(stats.vcpu_cpu_usec >= 20_000, "{stats:?}");
    assert!(stats.memory_usage_bytes.is_some() || !controllers.contains("memory"));

    let created = all_created(&sandbox);
    sandbox.teardown().unwrap();
    sandbox.teardown().unwrap();
    assert_clean(&created, &origin);
    assert!(matches!(
        sandbox.place(&vcpu_tids, &[]),
        Err(CgroupError::TornDown { .. })
    ));
}

#[test]
fn v1_sandbox_only_places_the_whole_process() {
    let _guard = lock();
    require_v1();
    let origin = self_cgroups();
    let vcpus = [FakeThread::spawn("vcpu0"), FakeThread::spawn("vcpu1")];
    let io = FakeThread::spawn("vmm-io");
    let vcpu_tids: Vec<i32> = vcpus.iter().map(|t| t.tid).collect();

    let mut cfg = config("v1only", CgroupVersion::V1, PlacementMode::SandboxOnly);
    cfg.cpu_quota = Some(2.0);
    let mut sandbox = Sandbox::create(&cfg).unwrap();
    sandbox.place(&vcpu_tids, &[io.tid]).unwrap();
    for h in &sandbox.paths().hierarchies {
        assert_eq!(h.overhead, None);
        let listed = read_ids(&h.sandbox.join("tasks"));
        for tid in threads() {
            assert!(
                listed.contains(&tid) || !thread_alive(tid),
                "thread {tid} not in {}",
                h.sandbox.display()
            );
        }
        assert!(!h.created.iter().any(|d| d.ends_with("corral_overhead")));
    }
    let cpu = hierarchy(&sandbox.paths().hierarchies, "cpu").clone();
    assert_eq!(read(&cpu.sandbox.join("cpu.cfs_quota_us")), "200000");

    // Containers changed: new quota, then none.
    sandbox.update_limits(Some(0.5), None).unwrap();
    assert_eq!(read(&cpu.sandbox.join("cpu.cfs_quota_us")), "50000");
    sandbox.update_limits(None, None).unwrap();
    assert_eq!(read(&cpu.sandbox.join("cpu.cfs_quota_us")), "-1");

    vcpus[1].spin(Duration::from_millis(40));
    let stats = sandbox.stats().unwrap();
    assert_eq!(stats.cpu_source, CpuStatSource::ProcTasks);
    assert!(stats.vcpu_cpu_usec > 0, "{stats:?}");

    let created = all_created(&sandbox);
    drop(sandbox); // Drop-driven teardown.
    assert_clean(&created, &origin);
}

#[test]
fn v1_pinning_follows_the_cpuset_size() {
    let _guard = lock();
    let controllers = require_v1();
    assert!(controllers.contains("cpuset"));
    let origin = self_cgroups();
    let mut cfg = config("v1pin", CgroupVersion::V1, PlacementMode::Split);
    cfg.pin_vcpus = true;
    let mut sandbox = Sandbox::create(&cfg).unwrap();
    let cpuset = hierarchy(&sandbox.paths().hierarchies, "cpuset").clone();
    let allowed = parse_cpu_list(&read(&cpuset.sandbox.join("cpuset.effective_cpus")));
    assert!(!allowed.is_empty());

    // As many vCPUs as allowed CPUs: vCPU i on the i-th CPU.
    let threads: Vec<FakeThread> = (0..=allowed.len())
        .map(|i| FakeThread::spawn(&format!("vcpu{i}")))
        .collect();
    let exact: Vec<i32> = threads[..allowed.len()].iter().map(|t| t.tid).collect();
    let report = sandbox.place(&exact, &[]).unwrap();
    assert_eq!(report.pinning, PinDecision::Pinned);
    for (i, &tid) in exact.iter().enumerate() {
        assert_eq!(cpus_allowed(tid), vec![allowed[i]], "vCPU {i} (TID {tid})");
        assert_eq!(report.vcpus[i].affinity, Some(vec![allowed[i]]));
    }

    // One vCPU more than CPUs: pinning cleared to the whole set.
    let all: Vec<i32> = threads.iter().map(|t| t.tid).collect();
    let report = sandbox.place(&all, &[]).unwrap();
    assert_eq!(report.pinning, PinDecision::Unpinned);
    for &tid in &all {
        assert_eq!(cpus_allowed(tid), allowed, "TID {tid}");
    }

    let created = all_created(&sandbox);
    sandbox.teardown().unwrap();
    assert_clean(&created, &origin);
}

fn cpus_allowed(tid: i32) -> Vec<u32> {
    let status = read(Path::new(&format!("/proc/self/task/{tid}/status")));
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    parse_cpu_list(line)
}

fn parse_cpu_list(list: &str) -> Vec<u32> {
    let mut cpus = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<u32>().unwrap()..=b.parse().unwrap()),
            None => cpus.push(part.parse().unwrap()),
        }
    }
    cpus
}

#[test]
fn v1_devices_keep_the_vmm_devices_allowed() {
    let _guard = lock();
    let controllers = require_v1();
    assert!(
        controllers.contains("devices"),
        "the v1 devices hierarchy must be mounted for this test"
    );
    let origin = self_cgroups();
    let disk = fs::read_dir("/dev")
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            use std::os::unix::fs::FileTypeExt;
            fs::metadata(p)
                .map(|m| m.file_type().is_block_device())
                .unwrap_or(false)
        })
        .expect("this test needs a block device node in /dev to stand in for a disk");

    let mut cfg = config("v1dev", CgroupVersion::V1, PlacementMode::Split);
    cfg.devices = vec![DeviceRule::deny_all()];
    cfg.disks = vec![disk.clone(), PathBuf::from("/proc/self/stat")];
    let mut sandbox = Sandbox::create(&cfg).unwrap();
    let devices = hierarchy(&sandbox.paths().hierarchies, "devices").clone();
    let sandbox_list = read(&devices.sandbox.join("devices.list"));
    let overhead_list = read(&devices.overhead.as_ref().unwrap().join("devices.list"));
    assert!(
        !sandbox_list.contains("a *:* rwm"),
        "deny-all not applied: {sandbox_list}"
    );

    let mut expected = Vec::new();
    for node in ["/dev/kvm", "/dev/net/tun", "/dev/vhost-net"] {
        if Path::new(node).exists() {
            expected.push(DeviceRule::for_node(Path::new(node)).unwrap().unwrap());
        }
    }
    expected.push(DeviceRule::for_node(&disk).unwrap().unwrap());
    for rule in &expected {
        let kind = match rule.kind {
            DeviceKind::Block => 'b',
            DeviceKind::Char => 'c',
            DeviceKind::All => 'a',
        };
        let line = format!("{kind} {}:{} rwm", rule.major.unwrap(), rule.minor.unwrap());
        assert!(
            sandbox_list.lines().any(|l| l == line),
            "{line} missing: {sandbox_list}"
        );
        assert!(
            overhead_list.lines().any(|l| l == line || l == "a *:* rwm"),
            "{line} not allowed in overhead: {overhead_list}"
        );
    }

    let created = all_created(&sandbox);
    sandbox.teardown().unwrap();
    assert_clean(&created, &origin);
}

#[test]
fn v1_failed_create_leaves_nothing_behind() {
    let _guard = lock();
    require_v1();
    let origin = self_cgroups();
    let cfg = config("v1fail", CgroupVersion::V1, PlacementMode::Split);
    // Occupy the sandbox's name in the freezer hierarchy, the last one
    // created, so creation fails after the others were made.
    let origins: HashMap<String, String> = origin
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _ = parts.next();
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect();
    let freezer_origin = origins.get("freezer").expect("freezer hierarchy required");
    let blocker = v1_mount_point("freezer")
        .join(freezer_origin.trim_start_matches('/'))
        .join(&cfg.sandbox_id);
    fs::create_dir(&blocker).unwrap();

    let err = Sandbox::create(&cfg).unwrap_err();
    let blocked = matches!(&err, CgroupError::AlreadyExists { path } if *path == blocker);
    fs::remove_dir(&blocker).unwrap();
    assert!(blocked, "unexpected error: {err}");
    assert!(err.to_string().contains(&blocker.display().to_string()));

    for controller in mounted_v1_controllers() {
        let base = v1_mount_point(&controller).join(origins[&controller].trim_start_matches('/'));
        assert!(
            !base.join(&cfg.sandbox_id).exists(),
            "{controller} sandbox left"
        );
        assert!(
            !base.join("corral_overhead").join(&cfg.sandbox_id).exists(),
            "{controller} overhead left"
        );
    }
    assert_eq!(self_cgroups(), origin);
}

#[test]
fn place_rejects_bad_thread_lists() {
    let _guard = lock();
    require_v1();
    let origin = self_cgroups();
    let vcpu = FakeThread::spawn("vcpu0");
    let mut sandbox =
        Sandbox::create(&config("v1bad", CgroupVersion::V1, PlacementMode::Split)).unwrap();
    assert!(matches!(
        sandbox.place(&[1], &[]),
        Err(CgroupError::NotOurThread { tid: 1 })
    ));
    assert!(matches!(
        sandbox.place(&[vcpu.tid], &[vcpu.tid]),
        Err(CgroupError::DuplicateTid { .. })
    ));
    assert!(matches!(
        sandbox.place(&[0], &[]),
        Err(CgroupError::InvalidTid { tid: 0 })
    ));
    // A foreign TID among the others is skipped, not moved.
    let report = sandbox.place(&[vcpu.tid], &[1]).unwrap();
    assert!(report.skipped.iter().any(|s| s.tid == 1));
    let created = all_created(&sandbox);
    sandbox.teardown().unwrap();
    assert_clean(&created, &origin);
}

#[test]
fn v1_absolute_parent_is_created_and_removed() {
    let _guard = lock();
    require_v1();
    let origin = self_cgroups();
    let vcpu = FakeThread::spawn("vcpu0");
    let mut cfg = config("abs", CgroupVersion::V1, PlacementMode::Split);
    cfg.parent = format!("/{}-parent/pods", cfg.sandbox_id);
    let mut sandbox = Sandbox::create(&cfg).unwrap();
    sandbox.place(&[vcpu.tid], &[]).unwrap();
    for h in &sandbox.paths().hierarchies {
        assert_eq!(h.parent, h.mount_point.join(&cfg.parent[1..]), "{h:?}");
        // The parent chain and corral_overhead were created here too.
        assert!(h.created.contains(&h.parent));
        assert!(h.created.contains(&h.parent.join("corral_overhead")));
        assert_eq!(
            read_ids(&h.sandbox.join("tasks")),
            BTreeSet::from([vcpu.tid])
        );
    }
    let created = all_created(&sandbox);
    sandbox.teardown().unwrap();
    assert_clean(&created, &origin);
}

// ---------------------------------------------------------------- systemd

#[test]
fn systemd_form_without_systemd_falls_back_to_cgroupfs() {
    let _guard = lock();
    require_v1();
    let origin = self_cgroups();
    let systemd_running = Path::new("/run/systemd/system").is_dir();
    let vcpu = FakeThread::spawn("vcpu0");
    let mut cfg = config("sd", CgroupVersion::V1, PlacementMode::Split);
    let name = cfg.sandbox_id.clone();
    cfg.parent = format!("system.slice:corral:{name}");
    let mut sandbox = Sandbox::create(&cfg).unwrap();
    let report = sandbox.place(&[vcpu.tid], &[]).unwrap();

    if systemd_running {
        // Either path is valid on a systemd host; placement must work.
        assert!(report.driver.kind == DriverKind::Systemd || report.driver.fallback.is_some());
    } else {
        assert_eq!(report.driver.kind, DriverKind::Cgroupfs);
        let reason = report
            .driver
            .fallback
            .as_deref()
            .expect("fallback recorded");
        assert!(reason.contains("/run/systemd/system"), "{reason}");
        assert!(report.warnings.iter().any(|w| w.contains("systemd")));
    }
    for h in &sandbox.paths().hierarchies {
        if report.driver.kind == DriverKind::Cgroupfs {
            let scope = h.origin.join(format!("system.slice/corral-{name}.scope"));
            assert_eq!(
                h.parent, scope,
                "fallback keeps the systemd layout below the origin"
            );
        }
        assert_eq!(
            read_ids(&h.sandbox.join("tasks")),
            BTreeSet::from([vcpu.tid])
        );
        assert_others_listed(&h.overhead.as_ref().unwrap().join("tasks"), &[vcpu.tid]);
    }
    let created = all_created(&sandbox);
    sandbox.teardown().unwrap();
    assert_clean(&created, &origin);
}
