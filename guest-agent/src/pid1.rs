//! Duties of the agent when it is the guest's PID 1: the mounts a process
//! expects, and a clean power-off (with the reason on the console) instead
//! of the kernel panic that PID 1 exiting would cause.

use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Mounts proc, sysfs, devtmpfs, cgroup2 and a tmpfs /run where missing.
pub fn mount_basics() {
    for (source, target, fstype) in [
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("devtmpfs", "/dev", "devtmpfs"),
        ("cgroup2", "/sys/fs/cgroup", "cgroup2"),
        ("tmpfs", "/run", "tmpfs"),
    ] {
        if is_mount_point(target) {
            continue;
        }
        let _ = std::fs::create_dir_all(target);
        if let Err(e) = mount(
            Some(source),
            target,
            Some(fstype),
            MsFlags::MS_NOSUID,
            None::<&str>,
        ) {
            tracing::warn!("mount {fstype} on {target}: {e}");
        }
    }
}

fn is_mount_point(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(4) == Some(target))
        })
        .unwrap_or(false)
}

/// Says why on the console, syncs and powers the VM off.
pub fn power_off(reason: &str) -> ! {
    let line = format!("corral-agent: {reason}; powering off\n");
    let _ = std::fs::write(Path::new("/dev/console"), &line);
    eprint!("{line}");
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_POWER_OFF);
    // Only reached if the reboot call failed: nothing left to do.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
