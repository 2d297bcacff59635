//! Shared by the integration tests and benchmarks: the test guest, the KVM
//! check that fails loudly, a lock that keeps VMs from overlapping (thread
//! names and CPU time are per process), and /proc helpers.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use corral_vmm::{ConsoleBuffer, ConsoleConfig, ConsoleInput, ConsoleOutput, VmConfig};

/// The test guest ELF, built by build.rs.
pub fn test_guest() -> PathBuf {
    PathBuf::from(env!("CORRAL_TEST_GUEST"))
}

/// Which KVM this is, for test output.
pub fn kvm_flavour() -> &'static str {
    if Path::new("/sys/module/kvm_pvm").exists() {
        "PVM (kvm-pvm: guest ring 0 emulated, ring 3 native)"
    } else {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        if cpuinfo.split_whitespace().any(|w| w == "vmx" || w == "svm") {
            "hardware virtualization (vmx/svm)"
        } else {
            "unknown"
        }
    }
}

/// Fails the test loudly unless /dev/kvm can be opened read-write, and
/// serialises tests that run VMs. Hold the guard for the whole test.
pub fn kvm() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    static ANNOUNCED: OnceLock<()> = OnceLock::new();
    // Lock first: tests count this process's fds while holding it.
    let guard = LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!("this test needs /dev/kvm (read-write) and cannot run without it: {e}");
    }
    ANNOUNCED.get_or_init(|| eprintln!("KVM on this host: {}", kvm_flavour()));
    guard
}

/// A config booting the test guest with `cmdline`, console into a buffer.
pub fn guest_config(vcpus: u32, cmdline: &str) -> (VmConfig, ConsoleBuffer) {
    let console = ConsoleBuffer::new();
    let mut config = VmConfig::new(test_guest());
    config.vcpus = vcpus;
    config.cmdline = cmdline.to_string();
    config.console = ConsoleConfig {
        output: ConsoleOutput::Buffer(console.clone()),
        input: ConsoleInput::None,
    };
    (config, console)
}

/// This process's threads: TID → name.
pub fn threads() -> BTreeMap<i32, String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let tid = e.file_name().to_str()?.parse().ok()?;
            let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
            Some((tid, comm.trim().to_string()))
        })
        .collect()
}

/// TIDs of this process's threads whose name matches `pred`.
pub fn tids_named(pred: impl Fn(&str) -> bool) -> Vec<i32> {
    threads()
        .into_iter()
        .filter(|(_, name)| pred(name))
        .map(|(tid, _)| tid)
        .collect()
}

/// Whether `name` is a vCPU thread name (`vcpu` + digits).
pub fn is_vcpu_name(name: &str) -> bool {
    name.strip_prefix("vcpu")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Number of open file descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// A scratch directory for this test process.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("corral-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether /dev/kvm is the PVM flavour (guest ring 0 emulated).
pub fn is_pvm() -> bool {
    Path::new("/sys/module/kvm_pvm").exists()
}

/// Runs one of the repository's build scripts (cached builds) and returns
/// the path it prints on its last stdout line. Panics with its stderr when
/// it fails: a test that needs the artefact cannot pass without it.
pub fn run_build_script(script: &str, args: &[&str]) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new("bash")
        .arg(root.join(script))
        .args(args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    assert!(out.status.success(), "{script} {args:?} failed");
    let stdout = String::from_utf8(out.stdout).unwrap();
    PathBuf::from(
        stdout
            .lines()
            .last()
            .expect("the script prints its output path")
            .trim(),
    )
}

/// The guest kernel's output directory (vmlinux, bzImage, config).
pub fn guest_kernel(variant: &str) -> PathBuf {
    run_build_script("guest-kernel/build.sh", &["--variant", variant])
}

/// The guest initramfs.
pub fn initramfs() -> PathBuf {
    run_build_script("rootfs/build.sh", &[])
}

/// CPU time (user + system, in clock ticks) a thread of this process used.
pub fn cpu_ticks(tid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap();
    // Fields after the parenthesised name; utime and stime are 14th and 15th.
    let rest = stat.rsplit_once(')').unwrap().1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// Waits for `child` (whose stdout and stderr are piped) for at most
/// `limit`, killing it and failing the test with `what` if it takes longer.
pub fn wait_output_within(
    mut child: std::process::Child,
    limit: std::time::Duration,
    what: &str,
) -> std::process::Output {
    // Its pipes are drained while it runs: a child that fills one (a guest
    // console past 64 KiB, say with RCU stall warnings under load) would
    // otherwise block on its write and look hung.
    let stdout = drain(child.stdout.take(), "drain-stdout");
    let stderr = drain(child.stderr.take(), "drain-stderr");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let threads = thread_states(child.id());
            child.kill().unwrap();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&stdout.join().unwrap()).into_owned();
            let err = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
            panic!(
                "{what} did not finish within {limit:?}; its threads (name, state, wait channel):\n\
                 {threads}its output so far:\n{out}\n{err}"
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Reads `pipe` to its end on a thread named `name`.
fn drain<R: std::io::Read + Send + 'static>(
    pipe: Option<R>,
    name: &str,
) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut buf);
            }
            buf
        })
        .unwrap()
}

/// One line per thread of process `pid`: its name, state and wait channel.
fn thread_states(pid: u32) -> String {
    let mut lines = String::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let read = |f: &str| std::fs::read_to_string(task.path().join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat
            .rsplit_once(") ")
            .and_then(|(_, r)| r.get(..1))
            .unwrap_or("?");
        lines.push_str(&format!(
            "  {} {state} {}\n",
            read("comm").trim(),
            read("wchan")
        ));
    }
    lines
}

/// QEMU options every reference run uses: nothing the command line does
/// not ask for, no display, and exit instead of rebooting.
pub const QEMU_BARE: [&str; 4] = ["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"];

/// QEMU with KVM and the host CPU, minus the feature this KVM refuses.
pub const QEMU_KVM: [&str; 4] = ["-accel", "kvm", "-cpu", "host,-arch-capabilities"];

/// The TIDs listed in a cgroup task file (`tasks`, `cgroup.threads`).
pub fn ids(file: &std::path::Path) -> std::collections::BTreeSet<i32> {
    std::fs::read_to_string(file)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()))
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}
