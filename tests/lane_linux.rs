//! Linux user space under Corral, on real KVM: the nested-KVM lane
//! (`support/nested`), since this machine's PVM `/dev/kvm` cannot run a
//! Linux guest's user space. Each test boots one L1 machine that runs the
//! debug `corral` binary against L1's `/dev/kvm`:
//!
//! - the default kernel variant as vmlinux (PVH) and bzImage, 2 vCPUs, to
//!   the initramfs's ready marker and an ACPI power-off (status 0); a guest
//!   reboot ends with the documented reset status;
//! - every virtio device used from the guest's user space;
//! - virtio-blk durability: data the guest flushed survives a power cut of
//!   the whole L1, and the same test fails when flushes are ignored.
//!
//! Nothing timed here is a performance figure (L1 is emulated).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/nested/mod.rs"]
mod nested;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nested::{sh_quote, Lane};

const READY: &str = "corral-rootfs: ready";
const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// The base initramfs plus an archive that adds `/etc/corral/run` (the
/// script the initramfs's init runs before powering off), written to `dir`.
fn initramfs_running(dir: &Path, name: &str, run: &str) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = dir.join(format!("{name}.run"));
    std::fs::write(&script, run).unwrap();
    let list = dir.join(format!("{name}.list"));
    std::fs::write(
        &list,
        "dir /etc 0755 0 0\ndir /etc/corral 0755 0 0\nfile /etc/corral/run ${RUN} 0755 0 0\n",
    )
    .unwrap();
    let extra = Command::new("python3")
        .arg(root.join("rootfs/mkcpio.py"))
        .arg(&list)
        .env("RUN", &script)
        .output()
        .unwrap();
    assert!(
        extra.status.success(),
        "{}",
        String::from_utf8_lossy(&extra.stderr)
    );
    // Linux unpacks concatenated cpio archives in order.
    let mut image = std::fs::read(common::initramfs()).unwrap();
    image.extend_from_slice(&extra.stdout);
    let out = dir.join(format!("{name}.cpio"));
    std::fs::write(&out, image).unwrap();
    out
}

/// A file the L1 script wrote into the share (a guest console's CRLFs as LFs).
fn read(dir: &Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .replace('\r', "")
}

fn status(dir: &Path, name: &str) -> i32 {
    read(dir, name).trim().parse().unwrap()
}

#[test]
fn linux_user_space_vmlinux_and_bzimage_with_two_vcpus_and_acpi_power_off() {
    let kernel = common::guest_kernel("default");
    let initrd = common::initramfs();
    let share = common::scratch_dir("lane-boot");
    let reboot = initramfs_running(&share, "reboot", "#!/bin/sh\nreboot -f\n");
    let script = format!(
        "K={k}; I={i}; C={c}; S={s}
for f in vmlinux bzImage; do
  $C run --kernel $K/$f --initrd $I --cpus 2 --memory 256 > $S/$f.log 2>&1
  echo $? > $S/$f.status
done
$C run --kernel $K/vmlinux --initrd {r} --cpus 1 --memory 256 > $S/reboot.log 2>&1
echo $? > $S/reboot.status
$C run --kernel {g} --cmdline r0=triplefault > $S/triple.log 2>&1
echo $? > $S/triple.status
",
        k = sh_quote(kernel.to_str().unwrap()),
        i = sh_quote(initrd.to_str().unwrap()),
        c = sh_quote(CORRAL),
        s = sh_quote(share.to_str().unwrap()),
        r = sh_quote(reboot.to_str().unwrap()),
        g = sh_quote(common::test_guest().to_str().unwrap()),
    );
    let out = Lane::new(&share).run(&script);
    assert_eq!(out.status, 0, "{}", out.console);
    for f in ["vmlinux", "bzImage"] {
        let log = read(&share, &format!("{f}.log"));
        assert_eq!(status(&share, &format!("{f}.status")), 0, "{f}:\n{log}");
        for needle in [
            "Linux version 6.",
            "Allowing 2 CPUs",
            "Brought up 1 node, 2 CPUs",
            "ACPI: FACP",
            "Run /init as init process",
            READY,
            "reboot: Power down",
        ] {
            assert!(log.contains(needle), "{f}: no {needle:?}:\n{log}");
        }
        eprintln!("{f}: {}", log.lines().find(|l| l.contains(READY)).unwrap());
    }
    let log = read(&share, "reboot.log");
    assert!(log.contains(READY), "{log}");
    assert_eq!(
        status(&share, "reboot.status"),
        3,
        "a guest reboot ends `corral run` with status 3:\n{log}"
    );
    // A guest's own triple fault (the test guest: a null IDT, then ud2):
    // status 4, and L1 reports the shutdown with the exception being
    // delivered, which the lane does not put down to the emulator.
    let log = read(&share, "triple.log");
    assert_eq!(status(&share, "triple.status"), 4, "{log}");
    let shutdowns: Vec<_> = out
        .console
        .lines()
        .filter(|l| l.contains(nested::L2_SHUTDOWN))
        .collect();
    assert!(
        shutdowns.iter().any(|l| l.contains("intr_info 0x80000306")),
        "no L2 shutdown delivering #UD (vector 6, type exception) in L1's console:\n{}",
        out.console
    );
    assert!(
        nested::interrupt_delivery_shutdowns(&out.console).is_empty(),
        "{shutdowns:?}"
    );
    eprintln!("{}", shutdowns.join("\n"));
    eprintln!("lane wall time {:.1} s (emulated)", out.wall.as_secs_f64());
    std::fs::remove_dir_all(&share).unwrap();
}

/// Which L2 shutdowns the lane puts down to the emulator: those during an
/// external interrupt's delivery. The first line is one from this lane
/// (the LAPIC timer's vector 0xec, L2 right after the idle loop's `hlt`).
#[test]
fn the_lane_blames_the_emulator_only_for_shutdowns_delivering_an_interrupt() {
    let line = |info: &str| {
        format!(
            "{} vcpu0-2120    [000] .....   778.076763: kvm_exit: vcpu 0 reason shutdown \
             rip 0xffffffff8140d04b info1 0x0000000000000000 info2 0x0000000000000000 \
             intr_info {info} error_code 0x00000000",
            nested::L2_SHUTDOWN
        )
    };
    let console = [
        line("0x800000ec"), // external interrupt, vector 0xec
        line("0x80000306"), // exception #UD: the guest's own
        line("0x80000b0e"), // #PF with an error code
        line("0x00000000"), // nothing being delivered
        line("0x000000ec"), // not valid
        line("0x800002ec"), // NMI type
        "corral-l1: status=1".to_string(),
        "intr_info 0x800000ec without the marker".to_string(),
        format!("{} intr_info", nested::L2_SHUTDOWN),
        format!("{} intr_info 0xzz", nested::L2_SHUTDOWN),
    ]
    .join("\n");
    let blamed = nested::interrupt_delivery_shutdowns(&console);
    assert_eq!(blamed, vec![line("0x800000ec")]);
}

/// Which timed-out runs the lane puts down to the emulator: those with a
/// vCPU in the same interrupt shadow in two register dumps seconds apart.
/// CPU#1's line is the one from this lane's timed-out run (L2's idle loop
/// on its `hlt`, right after `sti`, for ten minutes).
#[test]
fn the_lane_blames_the_emulator_for_a_vcpu_stuck_in_an_interrupt_shadow() {
    let cpu = |n: u32, rip: &str, ii: u32, hlt: u32| {
        format!(
            "CPU#{n}\nRAX=0000000000000000 RBX=ffffffff82613940 RCX=0000000000000001 \
             RDX=000000000001b5de\nRSI=0000000000000083 RDI=000000000001b5dc \
             RBP=0000000000000000 RSP=ffffffff82603e98\nRIP={rip} RFL=00000246 [---Z-P-] \
             CPL=0 II={ii} A20=1 SMM=0 HLT={hlt}\nES =0000 0000000000000000 ffffffff 00c00000\n"
        )
    };
    let idle = "ffffffff8140d04a";
    let first = [
        cpu(0, "ffffffff81a0c6ee", 0, 1),
        cpu(1, idle, 1, 0),
        cpu(2, "ffffffff81001234", 1, 0),
        cpu(3, "ffffffff81005678", 1, 0),
    ]
    .concat();
    let second = [
        cpu(0, "ffffffff81a0c6ee", 0, 1), // halted both times: fine
        cpu(1, idle, 1, 0),               // stuck in the shadow
        cpu(2, "ffffffff81001240", 1, 0), // in a shadow again, elsewhere
        cpu(3, "ffffffff81005678", 0, 0), // left the shadow
    ]
    .concat();
    assert_eq!(
        nested::stuck_in_interrupt_shadow(&first, &second),
        vec![format!("CPU#1 (RIP={idle})")]
    );
    assert!(nested::stuck_in_interrupt_shadow(&first, "monitor did not answer").is_empty());
    assert!(nested::stuck_in_interrupt_shadow(&second, &first.replace("II=1", "II=0")).is_empty());
}

/// 1024 numbered lines, 25 bytes each: what the guest writes to its disk.
fn pattern() -> Vec<u8> {
    (0..1024)
        .flat_map(|i| format!("corral-lane-block-{i:06}\n").into_bytes())
        .collect()
}

/// The same pattern, made by the guest's shell into /tmp/pat.
const GUEST_PATTERN: &str = r#"i=0; while [ $i -lt 1024 ]; do printf 'corral-lane-block-%06d\n' $i; i=$((i+1)); done > /tmp/pat"#;
/// Where on the disk the guest writes it: 64 KiB in.
const PATTERN_OFFSET: usize = 64 << 10;

/// The guest's side of the device test: each check prints `ok NAME` or
/// `FAIL NAME …`, and the script's status is the number of failures.
const DEVICES_GUEST: &str = r#"#!/bin/sh
fails=0
ok() { echo "corral-test: ok $1"; }
bad() { echo "corral-test: FAIL $*"; fails=$((fails+1)); }
PATTERN
# virtio-blk, read-write: the pattern goes to /dev/vda, flushed, and comes
# back after the guest's page cache is dropped.
if dd if=/tmp/pat of=/dev/vda bs=512 seek=128 conv=fsync 2>/dev/null; then ok blk-write; else bad blk-write; fi
echo 3 > /proc/sys/vm/drop_caches
n=$(wc -c < /tmp/pat)
if dd if=/dev/vda bs=512 skip=128 2>/dev/null | head -c $n | cmp -s - /tmp/pat; then ok blk-readback; else bad blk-readback; fi
# virtio-blk, read-only: flagged so, and writes are refused.
[ "$(cat /sys/block/vdb/ro)" = 1 ] && ok blk-ro-flag || bad blk-ro-flag "ro=$(cat /sys/block/vdb/ro)"
if dd if=/tmp/pat of=/dev/vdb bs=512 conv=fsync 2>/dev/null; then bad blk-ro-refuses; else ok blk-ro-refuses; fi
# virtio-net: frames both ways with the tap's host end (10.0.2.1 in L1).
ip link set eth0 up && ip addr add 10.0.2.2/24 dev eth0
if ping -c 3 -W 10 10.0.2.1 > /tmp/ping 2>&1; then ok net-ping; else bad net-ping "$(cat /tmp/ping)"; fi
rx=$(cat /sys/class/net/eth0/statistics/rx_packets); tx=$(cat /sys/class/net/eth0/statistics/tx_packets)
[ "$rx" -ge 3 ] && [ "$tx" -ge 3 ] && ok net-counters || bad net-counters "rx=$rx tx=$tx"
# virtio-vsock, guest → host: the host listens on UDS_5000.
got=$(echo guest-to-host | timeout 120 corral-vsock connect 2 5000)
[ "$got" = host-ack ] && ok vsock-g2h || bad vsock-g2h "got '$got'"
# virtio-vsock, host → guest: the host connects to port 6000 via CONNECT.
got=$(echo guest-reply | timeout 120 corral-vsock listen 6000)
[ "$got" = host-to-guest ] && ok vsock-h2g || bad vsock-h2g "got '$got'"
exit $fails
"#;

/// The host's (L1's) side of the vsock checks, over Corral's hybrid
/// vsock Unix socket: serve one guest connection on UDS_5000, then connect
/// to the guest's port 6000 (retrying until the guest listens).
const VSOCK_HOST: &str = r#"
import os, socket, sys, time
uds, out = sys.argv[1], sys.argv[2]
srv = socket.socket(socket.AF_UNIX)
srv.bind(uds + "_5000"); srv.listen(1); srv.settimeout(300)
c, _ = srv.accept(); c.settimeout(60)
data = b""
while not data.endswith(b"\n"):
    chunk = c.recv(100)
    if not chunk: break
    data += chunk
c.sendall(b"host-ack"); c.close()
open(out + ".g2h", "wb").write(data)
deadline = time.time() + 300
while True:
    s = socket.socket(socket.AF_UNIX); s.settimeout(60)
    s.connect(uds)
    s.sendall(b"CONNECT 6000\n")
    line = b""
    while not line.endswith(b"\n"):
        chunk = s.recv(1)
        if not chunk: break
        line += chunk
    if line.startswith(b"OK "):
        break
    s.close()
    if time.time() > deadline: sys.exit("the guest never listened on port 6000")
    time.sleep(0.2)
s.sendall(b"host-to-guest"); s.shutdown(socket.SHUT_WR)
reply = b""
while True:
    chunk = s.recv(100)
    if not chunk: break
    reply += chunk
open(out + ".h2g", "wb").write(reply)
"#;

#[test]
fn every_virtio_device_is_used_from_linux_user_space() {
    let kernel = common::guest_kernel("default");
    let share = common::scratch_dir("lane-devices");
    let guest = DEVICES_GUEST.replace("PATTERN", GUEST_PATTERN);
    let initrd = initramfs_running(&share, "devices", &guest);
    let rw = share.join("rw.img");
    let ro = share.join("ro.img");
    for (disk, fill) in [(&rw, 0u8), (&ro, 0x5a)] {
        std::fs::write(disk, vec![fill; 4 << 20]).unwrap();
    }
    std::fs::write(share.join("vsock.py"), VSOCK_HOST).unwrap();
    let script = format!(
        "S={s}
ip tuntap add dev lanetap0 mode tap && ip addr add 10.0.2.1/24 dev lanetap0 && ip link set lanetap0 up || exit 10
python3 $S/vsock.py /run/v.sock $S/vsock > $S/vsock.log 2>&1 &
{{ {c} run --kernel {k} --initrd {i} --memory 256 \\
    --disk $S/rw.img --disk $S/ro.img,ro --net lanetap0 --vsock 3,/run/v.sock
  echo $? > $S/devices.status; }} 2>&1 | tee $S/devices.log
wait
",
        s = sh_quote(share.to_str().unwrap()),
        c = sh_quote(CORRAL),
        k = sh_quote(kernel.join("vmlinux").to_str().unwrap()),
        i = sh_quote(initrd.to_str().unwrap()),
    );
    let out = Lane::new(&share).run(&script);
    assert_eq!(out.status, 0, "{}", out.console);
    let log = read(&share, "devices.log");
    let vsock_log = read(&share, "vsock.log");
    assert_eq!(status(&share, "devices.status"), 0, "{log}\n{vsock_log}");
    for check in [
        "blk-write",
        "blk-readback",
        "blk-ro-flag",
        "blk-ro-refuses",
        "net-ping",
        "net-counters",
        "vsock-g2h",
        "vsock-h2g",
    ] {
        assert!(
            log.contains(&format!("corral-test: ok {check}\n")),
            "{check} did not pass:\n{log}\nvsock host: {vsock_log}"
        );
    }
    assert!(log.contains("/etc/corral/run exited 0"), "{log}");
    // What the guest wrote is in the host file; the read-only disk is untouched.
    let disk = std::fs::read(&rw).unwrap();
    let expected = pattern();
    assert_eq!(
        &disk[PATTERN_OFFSET..PATTERN_OFFSET + expected.len()],
        &expected[..]
    );
    assert!(std::fs::read(&ro).unwrap().iter().all(|&b| b == 0x5a));
    assert_eq!(read(&share, "vsock.g2h"), "guest-to-host\n");
    assert_eq!(read(&share, "vsock.h2g"), "guest-reply\n");
    std::fs::remove_dir_all(&share).unwrap();
}

/// The guest writes the pattern with a flush, says so, and waits to be cut off.
const DURABILITY_GUEST: &str = r#"#!/bin/sh
PATTERN
dd if=/tmp/pat of=/dev/vda bs=512 seek=128 conv=fsync 2>/dev/null && echo "corral-test: flushed"
sleep 100000
"#;

/// Boots L1 with `disk` as its /dev/vda, runs Corral there on that block
/// device with `cache`, waits for the guest's flush, then kills L1 (QEMU)
/// outright. Returns what of the pattern reached the host file.
fn durability_run(cache: &str) -> bool {
    let kernel = common::guest_kernel("default");
    let share = common::scratch_dir(&format!("lane-durability-{cache}"));
    let guest = DURABILITY_GUEST.replace("PATTERN", GUEST_PATTERN);
    let initrd = initramfs_running(&share, "durability", &guest);
    let disk = share.join("l1-disk.img");
    std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
    // L1 writes back nothing on its own for an hour: only a flush moves
    // Corral's writes from L1's page cache to the disk QEMU gives it (the
    // host file). (An interval of 0 would not do: the first dirty page then
    // wakes the flusher at once.)
    let script = format!(
        "echo 360000 > /proc/sys/vm/dirty_writeback_centisecs
echo 360000 > /proc/sys/vm/dirty_expire_centisecs
{c} run --kernel {k} --initrd {i} --memory 256 --disk /dev/vda,cache={cache}
",
        c = sh_quote(CORRAL),
        k = sh_quote(kernel.join("vmlinux").to_str().unwrap()),
        i = sh_quote(initrd.to_str().unwrap()),
    );
    let mut lane = Lane::new(&share);
    lane.disks.push(disk.clone());
    // An L1 that stops running altogether (no heartbeat: the emulator
    // wedged, seen once in CI here) or a vCPU the emulator stopped running
    // is not a verdict on the disk: the scenario runs again once, from a
    // zeroed disk, loudly.
    let mut attempt = 0;
    let console = loop {
        let mut running = lane.spawn(&script);
        match running.wait_for_or_stall(
            "corral-test: flushed",
            Duration::from_secs(600),
            lane.stall,
        ) {
            Ok(()) => break running.kill(),
            Err(why) if attempt == 0 => {
                eprintln!("nested lane: {why}\nnested lane: running the power-cut scenario again");
                std::fs::write(&disk, vec![0u8; 4 << 20]).unwrap();
                attempt += 1;
            }
            Err(why) => panic!("nested lane, second attempt: {why}"),
        }
    };
    let data = std::fs::read(&disk).unwrap();
    let expected = pattern();
    let survived = data[PATTERN_OFFSET..PATTERN_OFFSET + expected.len()] == expected[..];
    eprintln!(
        "cache={cache}: the flushed pattern {} the power cut",
        if survived {
            "survived"
        } else {
            "did not survive"
        }
    );
    if !survived {
        assert!(
            data.iter().all(|&b| b == 0),
            "a partial write reached the disk:\n{console}"
        );
    }
    std::fs::remove_dir_all(&share).unwrap();
    survived
}

#[test]
fn flushed_writes_survive_a_power_cut_of_the_whole_l1() {
    assert!(
        durability_run("writeback"),
        "data the guest flushed was lost when L1 was killed"
    );
    // The same test with FLUSH ignored must see the loss: it can fail.
    assert!(
        !durability_run("unsafe"),
        "with flushes ignored the data still reached the host file: the test cannot tell"
    );
}

/// The lane itself: a script that hangs is killed at the timeout, and the
/// console it panics with says where each user task waited (init.sh's
/// watchdog), so a hang in CI can be diagnosed.
#[test]
fn a_hung_lane_is_killed_and_shows_where_its_tasks_wait() {
    let share = std::env::temp_dir().join(format!("corral-lane-hang-{}", std::process::id()));
    let mut lane = Lane::new(&share);
    // CI runs this beside other L1s on 2 cores: the dump gets a minute.
    lane.timeout = Duration::from_secs(90);
    lane.dump_window = Duration::from_secs(60);
    let started = std::time::Instant::now();
    let outcome = std::panic::catch_unwind(|| lane.run("echo lane-hang-start\nsleep 3600\n"));
    let _ = std::fs::remove_dir_all(&share);
    let panic = outcome.expect_err("a script sleeping for an hour finished");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("did not finish within 90s"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(150), "{message}");
    assert!(message.contains("lane-hang-start"), "{message}");
    // And where each of L1's vCPUs was, from QEMU's monitor.
    let registers = &message[message
        .find(nested::L1_REGISTERS)
        .unwrap_or_else(|| panic!("no L1 registers:\n{message}"))..];
    assert!(
        registers.contains("CPU#0") && registers.contains("CPU#1") && registers.contains("RIP="),
        "{registers}"
    );
    assert!(
        message.contains("corral-l1: watchdog: still running after 30s"),
        "{message}"
    );
    // The sleeping shell's task, with its wait channel and kernel stack.
    let sleeper = message
        .lines()
        .position(|l| l.starts_with("== /proc/") && l.contains(" sleep state=S"))
        .unwrap_or_else(|| panic!("no entry for the sleeping task:\n{message}"));
    assert!(
        message
            .lines()
            .skip(sleeper)
            .take(20)
            .any(|l| l.contains("nanosleep")),
        "{message}"
    );
    assert!(
        message.contains("corral-l1: watchdog: end of dump"),
        "{message}"
    );
}

/// The lane itself: an L1 that stops running altogether (here: QEMU
/// stopped with SIGSTOP once it is up; in CI, the emulator wedging) stops
/// touching its heartbeat, is killed, and the script runs again once.
#[test]
fn a_wedged_l1_is_noticed_by_its_heartbeat_and_run_again_once() {
    let share = std::env::temp_dir().join(format!("corral-lane-wedge-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(&share).unwrap();
    let mut lane = Lane::new(&share);
    lane.heartbeat = Duration::from_secs(1);
    lane.stall = Duration::from_secs(10);
    lane.timeout = Duration::from_secs(120);
    // Stop the first L1 once its heartbeat shows it is up.
    let heartbeat = share.join(".l1-heartbeat");
    let pattern = format!("path={},mount_tag=share", share.display());
    let stopper = std::thread::spawn(move || {
        // Generous: the other lane tests' L1s boot on the same 2 cores.
        let deadline = std::time::Instant::now() + Duration::from_secs(180);
        while !heartbeat.exists() {
            assert!(std::time::Instant::now() < deadline, "L1 never beat");
            std::thread::sleep(Duration::from_millis(100));
        }
        let status = Command::new("pkill")
            .args(["-STOP", "-f", &pattern])
            .status()
            .unwrap();
        assert!(status.success(), "no QEMU matched {pattern}");
    });
    let script = format!(
        "echo attempt >> {a}\nsleep 3\necho lane-wedge-done\n",
        a = sh_quote(share.join("attempts").to_str().unwrap())
    );
    let out = lane.run(&script);
    stopper.join().unwrap();
    let attempts = std::fs::read_to_string(share.join("attempts")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&share);
    assert_eq!(out.status, 0, "{}", out.console);
    assert!(out.console.contains("lane-wedge-done"), "{}", out.console);
    // The stopped run may or may not have got to its first line.
    assert!(
        (1..=2).contains(&attempts.lines().count()) && out.wall < Duration::from_secs(60),
        "attempts {attempts:?}, second run {:?}",
        out.wall
    );
}
