//! The nested-KVM lane: runs a shell script inside an "L1" machine, QEMU
//! TCG with `-cpu max`, whose emulated AMD SVM gives Debian's own kvm-amd a
//! real `/dev/kvm` there. L1 sees this machine's root read-only (virtio-9p,
//! under a tmpfs overlay), the test's share directory read-write at the same
//! path, and a pure cgroup v2 hierarchy laid out as systemd does
//! (`init.sh`). Used for what this machine's PVM `/dev/kvm` cannot do:
//! Linux user space under Corral, and a pure cgroup v2 host.
//!
//! Everything in L1 is emulated: nothing timed here is a performance
//! figure. A kit that cannot be built, a module that does not load, a
//! missing `/dev/kvm` in L1 or a timeout fails the test; none skips.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// L1's vCPUs: two, one per host core, with multi-threaded TCG (README,
/// "The nested-KVM lane", has the measurements behind these settings).
pub const L1_VCPUS: u32 = 2;
/// L1's memory: room for a 256 MiB L2 guest, the overlay's tmpfs and tests.
pub const L1_MEMORY_MIB: u32 = 2048;

const STATUS: &str = "corral-l1: status=";
const FAILED: &str = "corral-l1: FAILED:";

/// The repository's root: the package's directory or one above it (this
/// file serves the workspace's own tests and its members' tests alike).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .find(|d| d.join("tests/support/nested/build-kit.sh").exists())
        .expect("tests/support/nested/build-kit.sh above CARGO_MANIFEST_DIR")
        .to_path_buf()
}

/// The kit (L1 kernel + initramfs), built once and cached by its script.
pub fn kit() -> PathBuf {
    let script = repo_root().join("tests/support/nested/build-kit.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "the nested lane's kit could not be built ({}): see its messages above",
        script.display()
    );
    PathBuf::from(
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .last()
            .expect("build-kit.sh prints the kit's path")
            .trim(),
    )
}

/// One L1 at a time per test process: two emulated machines on two cores
/// would only slow each other down.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

/// The file in the share that L1's init touches (`corral.l1.heartbeat=`).
const HEARTBEAT_FILE: &str = ".l1-heartbeat";

/// When L1 dumps its tasks (init.sh's watchdog): `window` before the host
/// kills it, so the console of a run that timed out says where it hung.
fn watchdog_secs(timeout: Duration, window: Duration) -> u64 {
    timeout.as_secs().saturating_sub(window.as_secs()).max(5)
}

/// What to run in L1 and with what.
pub struct Lane {
    /// Host directory shared read-write at the same path; the script is
    /// written there as `lane-run.sh`.
    pub share: PathBuf,
    /// Host files given to L1 as virtio-blk disks (`/dev/vda`, `/dev/vdb`…
    /// in L1, whose root is 9p), with QEMU's write-back cache.
    pub disks: Vec<PathBuf>,
    /// The whole L1 run, boot to power-off, must end within this.
    pub timeout: Duration,
    /// L1 touches a heartbeat file in the share every this often; when it
    /// goes stale for [`Lane::stall`], L1 itself stopped running (the
    /// emulator wedged, as QEMU TCG rarely does) and the run is retried
    /// once, loudly.
    pub heartbeat: Duration,
    /// See [`Lane::heartbeat`].
    pub stall: Duration,
    /// How long before the timeout L1 dumps its tasks' stacks (the dump
    /// itself is slow when several emulated L1s share the host's cores).
    pub dump_window: Duration,
}

/// A finished L1 run.
#[derive(Debug)]
pub struct LaneOutput {
    /// Everything L1's console printed (its kernel is `quiet`).
    pub console: String,
    /// The script's exit status.
    pub status: i32,
    /// Wall time of the whole run (emulated: not a performance figure).
    pub wall: Duration,
}

impl Lane {
    /// A lane sharing `share`, no disks, 10 minutes.
    pub fn new(share: &Path) -> Self {
        Lane {
            share: share.to_path_buf(),
            disks: Vec::new(),
            timeout: Duration::from_secs(600),
            heartbeat: Duration::from_secs(10),
            stall: Duration::from_secs(120),
            dump_window: Duration::from_secs(30),
        }
    }

    /// Runs `script` (POSIX sh) in L1 and returns its output and status;
    /// panics, with the console, if L1 could not run it or time ran out.
    /// Run again once, loudly: an L1 that stopped running altogether (no
    /// heartbeat), a run that timed out with an emulated CPU stuck in an
    /// interrupt shadow ([`stuck_in_interrupt_shadow`]), and a failed
    /// script during which an L2 guest triple-faulted while the emulated
    /// CPU delivered it an interrupt ([`interrupt_delivery_shutdowns`]).
    pub fn run(&self, script: &str) -> LaneOutput {
        let why = match self.spawn(script).finish_or_stall(self.timeout, self.stall) {
            Ok(out) => {
                let shutdowns = interrupt_delivery_shutdowns(&out.console);
                if out.status == 0 || shutdowns.is_empty() {
                    return out;
                }
                format!(
                    "the script failed after an L2 guest triple-faulted while the emulated CPU \
                     delivered it an external interrupt, which no guest or VMM state explains \
                     (README, \"The nested-KVM lane\"):\n{}\nIts console:\n{}",
                    shutdowns.join("\n"),
                    out.console
                )
            }
            Err(why) => why,
        };
        eprintln!("nested lane: {why}\nnested lane: running the script again once");
        match self.spawn(script).finish_or_stall(self.timeout, self.stall) {
            Ok(out) => out,
            Err(why) => panic!("nested lane, second attempt: {why}"),
        }
    }

    /// Starts L1 running `script` and returns at once.
    pub fn spawn(&self, script: &str) -> RunningLane {
        let kit = kit();
        let guard = one_at_a_time();
        std::fs::create_dir_all(&self.share).unwrap();
        let share = self.share.canonicalize().unwrap();
        let script_path = share.join("lane-run.sh");
        let _ = std::fs::remove_file(share.join(HEARTBEAT_FILE));
        std::fs::write(&script_path, script).unwrap();
        let monitor = monitor_path();
        let _ = std::fs::remove_file(&monitor);
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-machine", "q35", "-accel", "tcg,thread=multi", "-cpu", "max"])
            .args(["-smp", &L1_VCPUS.to_string()])
            .args(["-m", &L1_MEMORY_MIB.to_string()])
            .args(["-nographic", "-nodefaults", "-no-user-config", "-no-reboot"])
            .args(["-serial", "stdio"])
            .arg("-monitor")
            .arg(format!("unix:{},server=on,wait=off", monitor.display()))
            .arg("-kernel")
            .arg(kit.join("vmlinuz"))
            .arg("-initrd")
            .arg(kit.join("initramfs.cpio.gz"))
            .arg("-append")
            .arg(format!(
                "console=ttyS0 quiet panic=-1 nokaslr corral.l1.script={} corral.l1.share={} \
                 corral.l1.watchdog={} corral.l1.heartbeat={}",
                script_path.display(),
                share.display(),
                watchdog_secs(self.timeout, self.dump_window),
                self.heartbeat.as_secs().max(1)
            ))
            .args(["-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap"])
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=share,security_model=passthrough,multidevs=remap",
                share.display()
            ));
        for (i, disk) in self.disks.iter().enumerate() {
            cmd.arg("-drive")
                .arg(format!(
                    "file={},if=none,id=disk{i},format=raw,cache=writeback",
                    disk.display()
                ))
                .args(["-device", &format!("virtio-blk-pci,drive=disk{i}")]);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| {
            panic!("cannot start qemu-system-x86_64 ({e}): install qemu-system-x86 (bash .ci/setup does)")
        });
        let console = Arc::new(Mutex::new(String::new()));
        let mut readers = Vec::new();
        for stream in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let console = console.clone();
            readers.push(
                std::thread::Builder::new()
                    .name("lane-console".into())
                    .spawn(move || pump(stream, &console))
                    .unwrap(),
            );
        }
        RunningLane {
            child,
            console,
            readers,
            started: Instant::now(),
            heartbeat: share.join(HEARTBEAT_FILE),
            monitor,
            _guard: guard,
        }
    }
}

/// Appends what `stream` yields to `console` until it ends.
fn pump(mut stream: Box<dyn Read + Send>, console: &Mutex<String>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        let text = String::from_utf8_lossy(&buf[..n]).replace('\r', "");
        console.lock().unwrap().push_str(&text);
    }
}

/// An L1 machine that is running.
pub struct RunningLane {
    child: Child,
    console: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    started: Instant,
    heartbeat: PathBuf,
    /// QEMU's human monitor (HMP), a Unix socket.
    monitor: PathBuf,
    _guard: MutexGuard<'static, ()>,
}

impl RunningLane {
    /// The console so far.
    pub fn console(&self) -> String {
        self.console.lock().unwrap().clone()
    }

    /// Waits until the console shows `needle`; panics, with the console, if
    /// L1 ends, fails or `limit` passes first.
    pub fn wait_for(&mut self, needle: &str, limit: Duration) {
        if let Err(why) = self.wait_for_or_stall(needle, limit, Duration::MAX) {
            panic!("{why}");
        }
    }

    /// Like [`RunningLane::wait_for`], but when the emulator is at fault,
    /// L1 is killed and the error says why, with its console, so the caller
    /// can run its scenario again: L1's heartbeat went stale for `stall`
    /// (the emulator wedged), or `limit` passed with a vCPU stuck in an
    /// interrupt shadow ([`stuck_in_interrupt_shadow`]).
    pub fn wait_for_or_stall(
        &mut self,
        needle: &str,
        limit: Duration,
        stall: Duration,
    ) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            let text = self.console();
            if text.contains(needle) {
                return Ok(());
            }
            assert!(!text.contains(FAILED), "L1 could not be set up:\n{text}");
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("L1 ended ({status}) before printing {needle:?}:\n{text}");
            }
            if Instant::now() > deadline {
                return Err(
                    self.timed_out(&format!("L1 did not print {needle:?} within {limit:?}"))
                );
            }
            if self.last_beat().elapsed().unwrap_or_default() > stall {
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.join_readers();
                return Err(format!(
                    "L1 stopped running (no heartbeat for {stall:?}: the emulator wedged). \
                     Its console:\n{}",
                    self.console()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills L1 (QEMU) outright, as a power cut: nothing in L1 gets to
    /// write anything back.
    pub fn kill(mut self) -> String {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.join_readers();
        self.console()
    }

    fn join_readers(&mut self) {
        for r in self.readers.drain(..) {
            r.join().unwrap();
        }
    }

    /// Waits for L1 to power off and returns the script's status; panics if
    /// L1 failed, printed no status, or did not end within `limit` of its
    /// start.
    pub fn finish(self, limit: Duration) -> LaneOutput {
        let stall = limit;
        self.finish_or_stall(limit, stall)
            .unwrap_or_else(|why| panic!("{why}"))
    }

    /// Like [`RunningLane::finish`], but a run that is the emulator's fault
    /// rather than the script's ends in an error saying which, with the
    /// console and L1's registers, instead of a panic: an L1 whose
    /// heartbeat file went stale for `stall` (L1 itself stopped running),
    /// one whose own kernel panicked before the script's status, and one
    /// that reached `limit` with a vCPU stuck in an interrupt shadow
    /// ([`stuck_in_interrupt_shadow`]). Any other timeout panics.
    pub fn finish_or_stall(
        mut self,
        limit: Duration,
        stall: Duration,
    ) -> Result<LaneOutput, String> {
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                self.join_readers();
                let console = self.console();
                assert!(
                    !console.contains(FAILED),
                    "L1 could not be set up:\n{console}"
                );
                let script_status = console
                    .lines()
                    .find_map(|l| l.split_once(STATUS).map(|(_, s)| s.trim().to_string()))
                    .and_then(|s| s.parse::<i32>().ok());
                // L1's own kernel died under the emulator (seen once: a
                // stack-guard hit in L1's page-fault path on a vCPU thread
                // while L2 reset): like a wedge, not a verdict on the test.
                if script_status.is_none() && console.contains("Kernel panic - not syncing") {
                    return Err(format!(
                        "L1's own kernel panicked before the script's status. Its console:\n{console}"
                    ));
                }
                let script_status = script_status.unwrap_or_else(|| {
                    panic!("L1 ended ({status}) without the script's status:\n{console}")
                });
                return Ok(LaneOutput {
                    console,
                    status: script_status,
                    wall: self.started.elapsed(),
                });
            }
            if self.started.elapsed() > limit {
                return Err(self.timed_out(&format!("L1 did not finish within {limit:?}")));
            }
            if self.last_beat().elapsed().unwrap_or_default() > stall {
                let registers = self.l1_registers();
                let _ = self.child.kill();
                let _ = self.child.wait();
                self.join_readers();
                return Err(format!(
                    "L1 stopped running (no heartbeat for {stall:?}: the emulator wedged). \
                     Its console:\n{}\n{registers}",
                    self.console()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ends a run past its time limit: asks for L1's registers twice, 3 s
    /// apart, and kills it. When a vCPU sat in the same interrupt shadow
    /// both times ([`stuck_in_interrupt_shadow`]), the emulator stopped
    /// running it: returns that as the error, with the console and the
    /// registers. Otherwise the script really hung: panics with `what`, the
    /// console and the registers.
    fn timed_out(&mut self, what: &str) -> String {
        let registers = self.l1_registers();
        std::thread::sleep(Duration::from_secs(3));
        let again = self.l1_registers();
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_readers();
        let console = self.console();
        let stuck = stuck_in_interrupt_shadow(&registers, &again);
        assert!(
            !stuck.is_empty(),
            "{what}:\n{console}\n{registers}\n3 s later:\n{again}"
        );
        format!(
            "{what}, and {} sat in an interrupt shadow at the same RIP for 3 s: a CPU runs \
             one instruction there, so the emulator had stopped running it (README, \"The \
             nested-KVM lane\"). Its console:\n{console}\n{registers}\n3 s later:\n{again}",
            stuck.join(", ")
        )
    }

    /// Every L1 vCPU's registers, asked of QEMU's monitor (`info registers
    /// -a`), for a run about to be killed: where an L1 that stopped
    /// beating was (L1's kernel cannot say so itself), or L2's state when a
    /// vCPU was in guest mode. A monitor that does not answer within 10 s
    /// (QEMU itself stuck or stopped) is said so.
    fn l1_registers(&self) -> String {
        use std::io::Write;
        let asked = std::os::unix::net::UnixStream::connect(&self.monitor).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(b"info registers -a\n")?;
            let mut text = Vec::new();
            let mut buf = [0u8; 4096];
            // The reply has no end marker: read until the monitor has been
            // quiet for a second after the first register dump.
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        text.extend_from_slice(&buf[..n]);
                        if text.windows(4).any(|w| w == b"RIP=") {
                            s.set_read_timeout(Some(Duration::from_secs(1)))?;
                        }
                    }
                    Err(_) if text.windows(4).any(|w| w == b"RIP=") => break,
                    Err(e) => return Err(e),
                }
            }
            let text = String::from_utf8_lossy(&text).replace('\r', "");
            // Past the monitor's banner and its echo of the command line.
            Ok(text
                .find("CPU#")
                .map_or(text.clone(), |at| text[at..].to_string()))
        });
        match asked {
            Ok(text) => format!("{L1_REGISTERS} (QEMU monitor, info registers -a):\n{text}"),
            Err(e) => format!(
                "{L1_REGISTERS}: QEMU's monitor ({}) did not answer: {e}",
                self.monitor.display()
            ),
        }
    }

    /// When L1 last touched its heartbeat file (its start until the first).
    fn last_beat(&self) -> std::time::SystemTime {
        let started = std::time::SystemTime::now() - self.started.elapsed();
        std::fs::metadata(&self.heartbeat)
            .and_then(|m| m.modified())
            .map_or(started, |t| t.max(started))
    }
}

impl Drop for RunningLane {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.monitor);
        // A panicking test must not leave an emulated machine behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Heads the registers of an L1 about to be killed.
pub const L1_REGISTERS: &str = "nested lane: L1's vCPUs before the kill";

/// A fresh path for one L1's monitor socket (short: a Unix socket's path
/// has a 108-byte limit, so not in the share).
fn monitor_path() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("corral-l1-{}-{n}.mon", std::process::id()))
}

/// What `init.sh` prints before each L2 shutdown L1's KVM traced.
pub const L2_SHUTDOWN: &str = "corral-l1: L2 shutdown:";

/// The L2 shutdowns (triple faults) in an L1 console that happened while
/// the CPU was delivering an external interrupt: SVM's EXITINTINFO
/// (`intr_info` in KVM's trace) valid, of type 0. Seen in this lane with
/// L2's RIP right after the `sti; hlt` of Linux's idle loop and the LAPIC
/// timer's vector: the guest's IDT and stack were fine there (it idles
/// through them hundreds of times a second), and interrupt delivery is the
/// emulated CPU's own work (QEMU TCG's SVM), so such a triple fault is the
/// emulator's. A triple fault of any other kind (an exception, or none
/// being delivered) is not in this list.
pub fn interrupt_delivery_shutdowns(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter(|l| l.contains(L2_SHUTDOWN))
        .filter(|l| {
            let info = l
                .split_whitespace()
                .skip_while(|w| *w != "intr_info")
                .nth(1)
                .and_then(|h| u32::from_str_radix(h.trim_start_matches("0x"), 16).ok());
            info.is_some_and(|i| i & (1 << 31) != 0 && (i >> 8) & 7 == 0)
        })
        .collect()
}

/// The vCPUs (`CPU#n`) that two of QEMU's register dumps
/// ([`RunningLane`]'s, `info registers -a`), taken seconds apart, both show
/// in an interrupt shadow (`II=1`: right after `sti` or a move to SS) at
/// the same RIP. A CPU leaves the shadow with its next instruction, so one
/// still there seconds later is not being run at all: seen in this lane as
/// L2's idle loop stopped between its `sti` and `hlt` (`RIP` on the `hlt`,
/// `II=1 HLT=0`) for ten minutes while every other CPU ran, the emulator's
/// (QEMU TCG's SVM) fault, not the guest's or the VMM's.
pub fn stuck_in_interrupt_shadow(first: &str, second: &str) -> Vec<String> {
    fn shadowed(dump: &str) -> Vec<(&str, &str)> {
        dump.split("CPU#")
            .skip(1)
            .filter_map(|cpu| {
                let id = cpu.split_whitespace().next()?;
                let words: Vec<&str> = cpu.split_whitespace().collect();
                let rip = words.iter().find_map(|w| w.strip_prefix("RIP="))?;
                words.contains(&"II=1").then_some((id, rip))
            })
            .collect()
    }
    let later = shadowed(second);
    shadowed(first)
        .into_iter()
        .filter(|cpu| later.contains(cpu))
        .map(|(id, rip)| format!("CPU#{id} (RIP={rip})"))
        .collect()
}

/// Quotes `s` for a POSIX shell.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Set in L1 by [`run_own_tests_in_l1`] for the tests it runs there.
pub const IN_L1_ENV: &str = "CORRAL_IN_L1";

/// Set in L1 by [`run_own_tests_in_l1`]: a directory shared with this
/// machine (read-write, same path), for what a test wants to outlive L1.
pub const SHARE_ENV: &str = "CORRAL_LANE_SHARE";

/// Passed from this machine's environment to the tests run in L1.
const FORWARDED_ENV: &[&str] = &[
    "CORRAL_CACHE_DIR",
    "XDG_CACHE_HOME",
    "RUST_LOG",
    "CORRAL_SHIM_BIN",
    "CORRAL_EDGE_BIN",
];

/// Whether this process runs inside the lane's L1 (pure cgroup v2 host).
pub fn in_l1() -> bool {
    std::env::var_os(IN_L1_ENV).is_some()
}

/// Runs this very test binary inside L1 with libtest `args` (filters,
/// `--skip`, `--exact`…), one test at a time, ignored tests included (tests
/// that need L1 are `#[ignore]`d on this machine), with [`IN_L1_ENV`] set:
/// the same tests that ran on this machine run again on L1's real KVM and
/// pure cgroup v2 host. Prints what the tests printed in L1. `runner` is the calling test's name: it is skipped in L1 (no L1
/// inside L1). Fails the calling test, with L1's console, unless every
/// test passed; returns the console for further checks.
pub fn run_own_tests_in_l1(runner: &str, args: &[&str], timeout: Duration) -> String {
    assert!(!in_l1(), "{runner} must not run inside L1");
    let exe = std::env::current_exe().unwrap();
    let share = std::env::temp_dir().join(format!("corral-lane-{runner}-{}", std::process::id()));
    // What the tests find their caches and logs by goes along (L1 starts
    // with a fresh environment).
    let mut forwarded = String::new();
    for var in FORWARDED_ENV {
        if let Some(value) = std::env::var_os(var) {
            forwarded.push_str(&format!(" {var}={}", sh_quote(&value.to_string_lossy())));
        }
    }
    // No backtraces: symbolising a debug test binary's DWARF under L1's
    // emulation took longer than the lane's whole timeout (a test that
    // failed in seconds was reported as "L1 did not finish within 900s",
    // its own message buried). The panic message and location still print.
    let mut cmd = format!(
        "export {IN_L1_ENV}=1 RUST_BACKTRACE=0 {SHARE_ENV}={}{forwarded}\nexec {} --test-threads=1 --nocapture --include-ignored --skip {}",
        sh_quote(share.to_str().unwrap()),
        sh_quote(exe.to_str().unwrap()),
        sh_quote(runner)
    );
    for a in args {
        cmd.push(' ');
        cmd.push_str(&sh_quote(a));
    }
    cmd.push('\n');
    let mut lane = Lane::new(&share);
    lane.timeout = timeout;
    let out = lane.run(&cmd);
    let tests = out
        .console
        .lines()
        .skip_while(|l| !l.starts_with("running "))
        .take_while(|l| !l.starts_with(STATUS));
    for line in tests {
        eprintln!("L1: {line}");
    }
    assert_eq!(
        out.status,
        0,
        "the tests failed on L1's pure cgroup v2 host (files they left: {}):\n{}",
        share.display(),
        out.console
    );
    assert!(
        out.console.contains("test result: ok.") && !out.console.contains(" 0 passed;"),
        "no test ran in L1:\n{}",
        out.console
    );
    // Kept when a test failed: what it left there (guest consoles) helps.
    let _ = std::fs::remove_dir_all(&share);
    out.console
}
