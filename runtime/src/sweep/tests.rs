//! The sweep's unit tests: names, verdicts, `/proc` parsing, and sweeps
//! of plain directories and sockets standing in for cgroups.

use super::*;

#[test]
fn names_parse_strictly() {
    assert_eq!(cgroup_pid("corral-1234", "corral-"), Some(1234));
    for bad in [
        "corral-",
        "corral-0",
        "corral-012",
        "corral-+1",
        "corral-1a",
    ] {
        assert_eq!(cgroup_pid(bad, "corral-"), None, "{bad}");
    }
    assert_eq!(cgroup_pid("corral_overhead", "corral-"), None);
    assert_eq!(cgroup_pid("corral-99999999999", "corral-"), None);
    let s = |n| socket_pid(n, "corral-", ".vsock");
    assert_eq!(s("corral-42.vsock"), Some(42));
    assert_eq!(s("corral-42.vsock_1024"), Some(42));
    for bad in [
        "corral-42.vsock_",
        "corral-42.vsock_x",
        "corral-42.vsockx",
        "corral-42.sock",
        "corral-.vsock",
        "corral-042.vsock",
        "other-42.vsock",
    ] {
        assert_eq!(s(bad), None, "{bad}");
    }
}

#[test]
fn pid_liveness_decisions() {
    let running = |c: &str| ProcState::Running { comm: c.into() };
    let own = "corral";
    assert_eq!(judge(7, 7, &running("corral"), own), Verdict::OwnPid);
    assert_eq!(judge(8, 7, &ProcState::Gone, own), Verdict::Exited);
    assert_eq!(judge(8, 7, &ProcState::Zombie, own), Verdict::Exited);
    assert_eq!(judge(8, 7, &running("corral"), own), Verdict::Live);
    assert_eq!(judge(8, 7, &running("corral-edge"), own), Verdict::Live);
    // A copy under another name is recognised by this program's name.
    assert_eq!(judge(8, 7, &running("vmrun"), "vmrun"), Verdict::Live);
    assert_eq!(judge(8, 7, &running("bash"), own), Verdict::PidReused);
}

#[test]
fn stat_lines_give_comm_and_state() {
    assert_eq!(
        parse_stat("12 (corral) S 1 2 3"),
        Some(("corral".into(), 'S'))
    );
    assert_eq!(parse_stat("12 (a) b) Z 1"), Some(("a) b".into(), 'Z')));
    assert_eq!(parse_stat("12 corral S"), None);
    assert_eq!(parse_stat("12 (corral)"), None);
    assert_eq!(probe(std::process::id()), {
        let comm = self_comm();
        ProcState::Running { comm }
    });
    assert_eq!(probe(u32::MAX), ProcState::Gone);
}

/// A process named like a Corral (a copy of `sleep` called
/// `corral-sleeper`), killed on drop.
struct Sleeper(std::process::Child);

impl Sleeper {
    fn spawn(dir: &Path) -> Sleeper {
        let exe = dir.join("corral-sleeper");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        Sleeper(std::process::Command::new(&exe).arg("60").spawn().unwrap())
    }
}

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn trees_go_deepest_first_unless_live_or_holding_tasks() {
    let base = std::env::temp_dir().join(format!("corral-sweep-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base).unwrap();
    let live = Sleeper::spawn(&base);
    // A gone pid's tree (v2 shape), a live Corral's, one whose child
    // lists a task, and a name that is not a sandbox's.
    let dead = base.join(format!("corral-{}", u32::MAX - 1));
    std::fs::create_dir_all(dead.join("vcpu")).unwrap();
    std::fs::create_dir_all(dead.join("overhead")).unwrap();
    let kept = base.join(format!("corral-{}", live.0.id()));
    std::fs::create_dir_all(kept.join("vcpu")).unwrap();
    let busy = base.join(format!("corral-{}", u32::MAX - 2));
    std::fs::create_dir_all(busy.join("vcpu")).unwrap();
    std::fs::write(busy.join("vcpu/tasks"), "1\n").unwrap();
    std::fs::create_dir_all(base.join("corral_overhead")).unwrap();
    let mut report = SweepReport::default();
    assert_eq!(sweep_cgroups(&base, "corral-", &mut report), 1);
    assert!(!dead.exists());
    assert_eq!(report.removed.last(), Some(&dead), "{report:?}");
    assert_eq!(report.removed.len(), 3, "{report:?}");
    assert!(kept.join("vcpu").exists() && base.join("corral_overhead").exists());
    assert!(busy.join("vcpu").exists());
    assert!(
        matches!(&report.kept[..], [SweepError::HoldsTasks { path }] if *path == busy.join("vcpu")),
        "{report:?}"
    );
    assert_eq!(
        sweep_cgroups(&base.join("missing"), "corral-", &mut report),
        0
    );
    drop(live);
    std::fs::remove_dir_all(&base).unwrap();
}

#[test]
fn only_stale_sockets_of_this_user_go() {
    use std::os::unix::net::UnixListener;
    let dir = std::env::temp_dir().join(format!("corral-sweep-sock-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let live = Sleeper::spawn(&dir);
    let gone = u32::MAX - 1;
    let _a = UnixListener::bind(dir.join(format!("corral-{gone}.vsock"))).unwrap();
    let _b = UnixListener::bind(dir.join(format!("corral-{gone}.vsock_52"))).unwrap();
    let _c = UnixListener::bind(dir.join(format!("corral-{}.vsock", live.0.id()))).unwrap();
    // A regular file with a socket's name stays.
    std::fs::write(dir.join(format!("corral-{gone}.vsock_53")), b"").unwrap();
    let report = sweep_sockets(&dir, "corral-", ".vsock");
    assert_eq!(report.removed.len(), 2, "{report:?}");
    assert!(dir.join(format!("corral-{gone}.vsock_53")).exists());
    assert!(dir.join(format!("corral-{}.vsock", live.0.id())).exists());
    drop(live);
    std::fs::remove_dir_all(&dir).unwrap();
}
