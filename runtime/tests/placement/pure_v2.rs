//! Placement on a pure cgroup v2 host laid out as systemd does (only cgroup2,
//! at /sys/fs/cgroup; controllers enabled in the root's and the slices'
//! `cgroup.subtree_control`; processes in leaves such as
//! `/system.slice/foo.service`): the nested lane's L1.
//!
//! Every test here runs inside L1 through `lane_pure_cgroup_v2`; run
//! directly on another host it only says so. In L1 it fails, with the
//! reason, unless the host is pure cgroup v2.

use std::process::{Child, Command, Stdio};

use super::*;

/// The cgroup2 mount of a pure v2 host.
const MOUNT: &str = "/sys/fs/cgroup";

/// Fails unless this runs in the nested lane's L1 on a pure cgroup v2 host.
fn require_pure_v2_lane() {
    assert!(
        nested::in_l1(),
        "this test needs a pure cgroup v2 host: run it through lane_pure_cgroup_v2, \
         which runs it in the nested lane's L1"
    );
    require_pure_v2();
}

fn require_pure_v2() {
    require_root();
    let mountinfo = read(Path::new("/proc/self/mountinfo"));
    let root_is_cgroup2 = mountinfo.lines().any(|line| {
        let Some((left, right)) = line.split_once(" - ") else {
            return false;
        };
        left.split_whitespace().nth(4) == Some(MOUNT)
            && right.split_whitespace().next() == Some("cgroup2")
    });
    let v1 = mounted_v1_controllers();
    assert!(
        root_is_cgroup2 && v1.is_empty(),
        "this test needs a pure cgroup v2 host (cgroup2 at {MOUNT}, no v1 hierarchy); \
         found cgroup2 at {MOUNT}: {root_is_cgroup2}, v1 controllers {v1:?}"
    );
    let offered = read(&Path::new(MOUNT).join("cgroup.controllers"));
    for controller in ["cpu", "memory"] {
        assert!(
            offered.split_whitespace().any(|c| c == controller),
            "this test needs the {controller} controller in {MOUNT}/cgroup.controllers \
             ({offered:?})"
        );
    }
}

/// The directory of a cgroup (as `/proc/self/cgroup` spells it).
fn dir_of(cgroup: &str) -> PathBuf {
    Path::new(MOUNT).join(cgroup.trim_start_matches('/'))
}

/// The directory of the cgroup this process is in.
fn own_dir() -> PathBuf {
    dir_of(&v2_cgroup_of_self())
}

fn words(file: &Path) -> BTreeSet<String> {
    read(file).split_whitespace().map(str::to_string).collect()
}

/// Another process (`sleep`) in a cgroup: by default the one this test
/// process is in, as a shell or a supervisor beside `corral run` would be.
/// Killed and reaped on drop.
struct Neighbour {
    child: Child,
    pid: i32,
}

impl Neighbour {
    fn spawn() -> Neighbour {
        let child = Command::new("sleep")
            .arg("3600")
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot start `sleep` as a neighbour process");
        let pid = i32::try_from(child.id()).unwrap();
        Neighbour { child, pid }
    }

    /// A neighbour living in `dir` instead.
    fn spawn_in(dir: &Path) -> Neighbour {
        let neighbour = Neighbour::spawn();
        fs::write(dir.join("cgroup.procs"), neighbour.pid.to_string())
            .unwrap_or_else(|e| panic!("cannot move the neighbour into {}: {e}", dir.display()));
        neighbour
    }
}

impl Drop for Neighbour {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts the throttling counter of `dir` moved: the quota binds.
fn assert_throttled(dir: &Path) {
    let stat = read(&dir.join("cpu.stat"));
    let throttled: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("nr_throttled "))
        .unwrap_or_else(|| panic!("no nr_throttled in {}/cpu.stat: {stat}", dir.display()))
        .parse()
        .unwrap();
    assert!(
        throttled > 0,
        "{} was never throttled: {stat}",
        dir.display()
    );
}

#[test]
#[ignore = "needs a pure cgroup v2 host: lane_pure_cgroup_v2 runs it in the nested lane's L1"]
fn pure_v2_split_beside_a_busy_origin_enforces_both_limits() {
    require_pure_v2_lane();
    let _guard = lock();
    let origin = self_cgroups();
    let origin_dir = own_dir();
    let neighbour = Neighbour::spawn();
    assert!(read_ids(&origin_dir.join("cgroup.procs")).contains(&neighbour.pid));
    let vcpus = [FakeThread::spawn("vcpu0"), FakeThread::spawn("vcpu1")];
    let io = FakeThread::spawn("vmm-io");
    let vcpu_tids: Vec<i32> = vcpus.iter().map(|t| t.tid).collect();

    // The default parent: relative to the process's cgroup, which holds
    // another process.
    let mut cfg = config("p2split", CgroupVersion::V2, PlacementMode::Split);
    cfg.cpu_quota = Some(0.5);
    cfg.memory_limit = Some(256 << 20);
    let mut sandbox = Sandbox::create(&cfg)
        .unwrap_or_else(|e| panic!("create beside a busy origin {origin_dir:?}: {e}"));
    assert!(sandbox.warnings().is_empty(), "{:?}", sandbox.warnings());
    let report = sandbox.place(&vcpu_tids, &[io.tid]).unwrap();
    let h = unified(&sandbox);
    let domain = h.domain.clone().unwrap();
    let overhead = h.overhead.clone().unwrap();
    eprintln!("busy origin {}: sandbox {h:?}", origin_dir.display());

    // No controller can be enabled in a cgroup holding another process, so
    // the sandbox goes beside the origin, as a transient scope would.
    assert_eq!(h.origin, origin_dir);
    assert!(!domain.starts_with(&origin_dir), "{h:?}");
    assert_eq!(Some(h.parent.as_path()), origin_dir.parent(), "{h:?}");
    assert_eq!(read(&h.sandbox.join("cpu.max")), "50000 100000");
    assert_eq!(read(&overhead.join("cpu.max")), "max 100000");
    assert_eq!(read(&domain.join("memory.max")), (256u64 << 20).to_string());
    assert_eq!(
        read_ids(&h.sandbox.join("cgroup.threads")),
        vcpu_tids.iter().copied().collect()
    );
    assert_others_listed(&overhead.join("cgroup.threads"), &vcpu_tids);
    assert!(report.warnings.is_empty(), "{:?}", report.warnings);
    assert_eq!(
        read_ids(&origin_dir.join("cgroup.procs")),
        BTreeSet::from([neighbour.pid]),
        "the neighbour stays where it was"
    );

    vcpus[0].spin(Duration::from_millis(300));
    assert_throttled(&h.sandbox);

    let created = all_created(&sandbox);
    sandbox.teardown().unwrap();
    assert_clean(&created, &origin);
    assert!(read_ids(&origin_dir.join("cgroup.procs")).contains(&neighbour.pid));
}

#[test]
#[ignore = "needs a pure cgroup v2 host: lane_pure_cgroup_v2 runs it in the nested lane's L1"]
fn pure_v2_sandbox_only_beside_a_busy_origin_enforces_both_limits() {
    require_pure_v2_lane();
    let _guard = lock();
    let origin = self_cgroups();
    let origin_dir = own_dir();
    let _neighbour = Neighbour::spawn();
    let vcpu = FakeThread::spawn("vcpu0");

    let mut cfg = config("p2only", CgroupVersion::V2, PlacementMode::SandboxOnly);
    cfg.cpu_quota = Some(0.5);
    cfg.memory_limit = Some(128 << 20);
    let mut sandbox = Sandbox::create(&cfg)
        .unwrap_or_else(|e| panic!("create beside a busy origin {origin_dir:?}: {e}"));
    sandbox.place(&[vcpu.tid], &[]).unwrap();
    let h = unified(&sandbox);
    assert_eq!(h.domain.as_ref(), Some(&h.sandbox));
    assert!(!h.sandbox.starts_with(&origin_dir), "{h:?}");
    assert_eq!(read(&h.sandbox.join("cgroup.type")), "domain");
    assert_eq!(read(&h.sandbox.join("cpu.max")), "50000 100000");
    assert_eq!(
        read(&h.sandbox.join("memory.max")),
        (128u64 << 20).to_string()
    );
    let listed = read_ids(&h.sandbox.join("cgroup.threads"));
    for tid in threads() {
        assert!(
            listed.contains(&tid) || !thread_alive(tid),
            "thread {tid} not placed"
        );
    }
    vcpu.spin(Duration::from_millis(300));
    assert_throttled(&h.sandbox);
    // memory.max holds: a child of the placed process (so in the sandbox
    // too) that touches 32 MiB lives; one that touches 256 MiB is killed
    // by the cgroup's OOM killer (no swap in L1).
    assert!(
        touch_mib(32).success(),
        "32 MiB under a 128 MiB limit failed"
    );
    let killed = touch_mib(256);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed),
        Some(libc::SIGKILL),
        "256 MiB under a 128 MiB memory.max was not OOM-killed: {killed:?}"
    );
    let events = read(&h.sandbox.join("memory.events"));
    let oom_kills: u64 = events
        .lines()
        .find_map(|l| l.strip_prefix("oom_kill "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(oom_kills >= 1, "memory.events: {events}");
    eprintln!("memory.max 128 MiB enforced: oom_kill {oom_kills}");

    let created = all_created(&sandbox);
    sandbox.teardown().unwrap();
    assert_clean(&created, &origin);
}

/// Runs a child that writes to every page of `mib` MiB and exits.
fn touch_mib(mib: usize) -> std::process::ExitStatus {
    let program =
        format!("b = bytearray({mib} << 20)\nfor i in range(0, len(b), 4096):\n    b[i] = 1\n");
    std::process::Command::new("python3")
        .args(["-c", &program])
        .status()
        .expect("python3 (from this machine's root, seen by L1)")
}

#[test]
#[ignore = "needs a pure cgroup v2 host: lane_pure_cgroup_v2 runs it in the nested lane's L1"]
fn pure_v2_teardown_returns_to_an_origin_it_had_to_vacate() {
    require_pure_v2_lane();
    let _guard = lock();
    // Beneath the origin, which holds only this process: it leaves the
    // origin for the sandbox so that the origin can pass cpu and memory on
    // (no-internal-process rule), and must get back in at teardown. Right
    // beneath it (the default parent) and a level deeper.
    for parent in ["", "pods"] {
        vacate_and_return(parent);
    }
}

fn vacate_and_return(parent: &str) {
    let origin = self_cgroups();
    let origin_dir = own_dir();
    let own = std::process::id() as i32;
    assert_eq!(
        read_ids(&origin_dir.join("cgroup.procs")),
        BTreeSet::from([own]),
        "this test needs the test process alone in its cgroup {}",
        origin_dir.display()
    );
    let subtree_before = read(&origin_dir.join("cgroup.subtree_control"));
    let vcpu = FakeThread::spawn("vcpu0");

    let mut cfg = config("p2vacate", CgroupVersion::V2, PlacementMode::Split);
    cfg.parent = parent.to_string();
    cfg.cpu_quota = Some(0.5);
    cfg.memory_limit = Some(256 << 20);
    let mut sandbox = Sandbox::create(&cfg).unwrap();
    sandbox.place(&[vcpu.tid], &[]).unwrap();
    let h = unified(&sandbox);
    let domain = h.domain.clone().unwrap();
    assert_eq!(h.parent, origin_dir.join(parent), "parent {parent:?}");
    let mut levels = vec![origin_dir.clone()];
    if h.parent != origin_dir {
        levels.push(h.parent.clone());
    }
    for dir in levels {
        let enabled = words(&dir.join("cgroup.subtree_control"));
        assert!(
            enabled.contains("cpu") && enabled.contains("memory"),
            "parent {parent:?}: {}: {enabled:?}",
            dir.display()
        );
    }
    assert_eq!(read(&h.sandbox.join("cpu.max")), "50000 100000");
    assert_eq!(read(&domain.join("memory.max")), (256u64 << 20).to_string());

    let created = all_created(&sandbox);
    if let Err(e) = sandbox.teardown() {
        panic!(
            "parent {parent:?}: teardown failed: {e} (caused by: {:?}); the process is in {}, \
             the origin's subtree_control is {:?}",
            std::error::Error::source(&e).map(ToString::to_string),
            v2_cgroup_of_self(),
            read(&origin_dir.join("cgroup.subtree_control"))
        );
    }
    assert_clean(&created, &origin);
    assert_eq!(
        read(&origin_dir.join("cgroup.subtree_control")),
        subtree_before,
        "parent {parent:?}: the origin's controllers are as they were"
    );
}

#[test]
#[ignore = "needs a pure cgroup v2 host: lane_pure_cgroup_v2 runs it in the nested lane's L1"]
fn pure_v2_nested_absolute_parent_gets_the_controllers_at_every_level() {
    require_pure_v2_lane();
    let _guard = lock();
    let origin = self_cgroups();
    let vcpu = FakeThread::spawn("vcpu0");
    let mut cfg = config("p2nest", CgroupVersion::V2, PlacementMode::Split);
    let top = format!("{}-a", cfg.sandbox_id);
    cfg.parent = format!("/{top}/b/c");
    cfg.cpu_quota = Some(0.5);
    cfg.memory_limit = Some(128 << 20);
    let mut sandbox = Sandbox::create(&cfg).unwrap();
    assert!(sandbox.warnings().is_empty(), "{:?}", sandbox.warnings());
    sandbox.place(&[vcpu.tid], &[]).unwrap();
    let h = unified(&sandbox);
    let a = dir_of(&top);
    assert_eq!(h.parent, a.join("b/c"));
    for dir in [a.clone(), a.join("b"), a.join("b/c")] {
        assert!(
            h.created.contains(&dir),
            "{} not created: {h:?}",
            dir.display()
        );
        let enabled = words(&dir.join("cgroup.subtree_control"));
        assert!(
            enabled.contains("cpu") && enabled.contains("memory"),
            "{}: subtree_control {enabled:?}",
            dir.display()
        );
    }
    let domain = h.domain.clone().unwrap();
    assert_eq!(read(&h.sandbox.join("cpu.max")), "50000 100000");
    assert_eq!(read(&domain.join("memory.max")), (128u64 << 20).to_string());
    assert_eq!(
        read_ids(&h.sandbox.join("cgroup.threads")),
        BTreeSet::from([vcpu.tid])
    );

    let created = all_created(&sandbox);
    sandbox.teardown().unwrap();
    assert_clean(&created, &origin);
    assert!(!a.exists());
}

#[test]
#[ignore = "needs a pure cgroup v2 host: lane_pure_cgroup_v2 runs it in the nested lane's L1"]
fn pure_v2_refuses_a_limit_it_cannot_enforce() {
    require_pure_v2_lane();
    let _guard = lock();
    let origin = self_cgroups();
    // An explicit parent beneath a cgroup that holds another process: no
    // controller can be enabled there, and no other layout is asked for.
    let busy_name = unique_id("p2busy");
    let busy = dir_of(&busy_name);
    fs::create_dir(&busy).unwrap();
    let neighbour = Neighbour::spawn_in(&busy);
    let mut failures = Vec::new();
    for (quota, memory, needle) in [
        (Some(0.5), None, "CPU quota 0.5"),
        (None, Some(256 << 20), "memory limit 268435456"),
    ] {
        let mut cfg = config("p2refuse", CgroupVersion::V2, PlacementMode::Split);
        cfg.parent = format!("/{busy_name}/pods");
        cfg.cpu_quota = quota;
        cfg.memory_limit = memory;
        match Sandbox::create(&cfg) {
            Ok(sandbox) => failures.push(format!(
                "{needle}: created anyway, with warnings {:?} and cgroups {:?}",
                sandbox.warnings(),
                sandbox.paths()
            )),
            Err(err) => {
                let text = err.to_string();
                let busy_pids = match &err {
                    CgroupError::LimitUnenforceable {
                        blocker: Blocker::Busy { pids },
                        ..
                    } => pids.clone(),
                    _ => Vec::new(),
                };
                let ok = busy_pids == [neighbour.pid]
                    && !text.contains('\n')
                    && text.contains(needle)
                    && text.contains(&format!("/{busy_name}"))
                    && text.contains(&neighbour.pid.to_string());
                if !ok {
                    failures.push(format!("{needle}: unexpected error: {text}"));
                }
            }
        }
        assert!(
            !busy.join("pods").exists(),
            "the refused sandbox left pods/"
        );
        assert_eq!(self_cgroups(), origin);
    }
    assert_eq!(read(&busy.join("cgroup.subtree_control")), "");
    drop(neighbour);
    fs::remove_dir(&busy).unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
#[ignore = "needs a pure cgroup v2 host: lane_pure_cgroup_v2 runs it in the nested lane's L1"]
fn pure_v2_a_limit_added_later_is_enforced_or_refused() {
    require_pure_v2_lane();
    let _guard = lock();
    let origin = self_cgroups();
    let vcpu = FakeThread::spawn("vcpu0");

    // Created with limits beside a busy origin: later changes apply.
    let neighbour = Neighbour::spawn();
    let mut cfg = config("p2upd", CgroupVersion::V2, PlacementMode::Split);
    cfg.cpu_quota = Some(0.5);
    cfg.memory_limit = Some(256 << 20);
    let mut sandbox = Sandbox::create(&cfg).unwrap();
    sandbox.place(&[vcpu.tid], &[]).unwrap();
    let h = unified(&sandbox);
    let domain = h.domain.clone().unwrap();
    sandbox.update_limits(Some(1.5), Some(512 << 20)).unwrap();
    assert_eq!(read(&h.sandbox.join("cpu.max")), "150000 100000");
    assert_eq!(read(&domain.join("memory.max")), (512u64 << 20).to_string());
    sandbox.update_limits(None, None).unwrap();
    assert_eq!(read(&h.sandbox.join("cpu.max")), "max 100000");
    assert_eq!(read(&domain.join("memory.max")), "max");
    let created = all_created(&sandbox);
    sandbox.teardown().unwrap();
    assert_clean(&created, &origin);

    // Created without limits beneath the busy origin: a quota added later
    // cannot get its controller there, and update_limits says so.
    let mut cfg = config("p2upd2", CgroupVersion::V2, PlacementMode::Split);
    cfg.cpu_quota = None;
    let mut sandbox = Sandbox::create(&cfg).unwrap();
    sandbox.place(&[vcpu.tid], &[]).unwrap();
    let h = unified(&sandbox);
    let outcome = sandbox.update_limits(Some(0.5), None);
    let cpu_max = fs::read_to_string(h.sandbox.join("cpu.max")).ok();
    let created = all_created(&sandbox);
    sandbox.teardown().unwrap();
    assert_clean(&created, &origin);
    drop(neighbour);
    match outcome {
        Ok(()) => assert_eq!(
            cpu_max.as_deref().map(str::trim),
            Some("50000 100000"),
            "update_limits(0.5 CPU) returned Ok, but the quota is not there (warnings {:?})",
            sandbox.warnings()
        ),
        Err(e) => {
            let text = e.to_string();
            assert!(
                text.contains("CPU quota 0.5") && text.contains("cpu controller"),
                "{text}"
            );
        }
    }
}
