//! The container side of a spawn: `corral-agent __child`, executed by the
//! agent right after `clone` (see `spawn.rs`), so it starts single-threaded
//! with no tokio and no locks held. It reads its [`ChildConfig`], builds
//! the container (init) or joins one (exec), switches to the process's
//! user, reports `ok`, waits for the go byte and executes the process.
//! Errors go back to the agent as one line on [`REPORT_FD`].

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow};
use nix::unistd::{chdir, pivot_root, setgid, setgroups, sethostname, setuid, Gid, Uid};
use oci_spec::runtime::{Mount, Process};

use crate::child_config::{ChildConfig, ChildKind, CONSOLE_FD, CONTROL_FD, REPORT_FD};
use crate::mountopts::MountOptions;
use crate::passwd;
use crate::securejoin::secure_join;

/// Runs the child; never returns.
pub fn main() -> ! {
    // SAFETY: the agent set these fds up for this process (spawn.rs); no
    // one else owns them.
    let (mut control, mut report) =
        unsafe { (File::from_raw_fd(CONTROL_FD), File::from_raw_fd(REPORT_FD)) };
    for fd in [CONTROL_FD, REPORT_FD] {
        // Neither may reach the container's process.
        let _ = nix::fcntl::fcntl(
            // SAFETY: the fd is owned by `control`/`report`, alive here.
            unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        );
    }
    // Not ptrace-able or /proc-readable by the container's processes while
    // it holds the agent's pipes (exec resets this for the process).
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    // Nothing the agent happened to have open reaches the container.
    close_from(CONSOLE_FD + 1);
    let err = match run(&mut control, &mut report) {
        Ok(()) => std::process::exit(0),
        Err(e) => e,
    };
    let _ = report.write_all(format!("error: {err}").as_bytes());
    std::process::exit(127)
}

/// Sets up and executes; returns only on failure, or Ok when the agent
/// gave up on the container before starting it.
fn run(control: &mut File, report: &mut File) -> Result<(), String> {
    let config = read_config(control)?;
    let process = &config.process;
    if process.terminal() != Some(true) {
        // CONSOLE_FD is only ours with a terminal.
        close_from(CONSOLE_FD);
    }
    match &config.kind {
        ChildKind::Init {
            rootfs,
            hostname,
            mounts,
            readonly_root,
            masked_paths,
            readonly_paths,
            sysctl,
        } => {
            // A cgroup namespace rooted at the cgroup the agent put us in.
            unshare(CloneFlags::CLONE_NEWCGROUP).map_err(|e| format!("unshare cgroup: {e}"))?;
            build_root(rootfs, mounts)?;
            write_sysctls(sysctl)?;
            restrict_paths(masked_paths, readonly_paths)?;
            if *readonly_root {
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .map_err(|e| format!("remount / read-only: {e}"))?;
            }
            if let Some(name) = hostname {
                sethostname(name).map_err(|e| format!("sethostname {name:?}: {e}"))?;
            }
        }
        ChildKind::Exec { init_pid } => join(*init_pid)?,
    }
    if process.terminal() == Some(true) {
        open_console()?;
    }
    if let Some(adj) = process.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("oomScoreAdj {adj}: {e}"))?;
    }
    set_rlimits(process)?;
    let env = environment(process);
    let program = resolve_program(process, &env)?;
    switch_user(process)?;
    let cwd = process.cwd();
    chdir(cwd).map_err(|e| format!("cwd {}: {e}", cwd.display()))?;
    if process.no_new_privileges() == Some(true) {
        // SAFETY: prctl with integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(format!(
                "noNewPrivileges: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    report
        .write_all(b"ok\n")
        .map_err(|e| format!("report: {e}"))?;
    let mut go = [0u8; 1];
    match control.read(&mut go) {
        Ok(1) => {}
        // The agent removed the container before starting it.
        _ => return Ok(()),
    }
    default_signals();
    let args = args(process)?;
    // Only returns on failure.
    let e = nix::unistd::execve(&program, &args, &env).unwrap_err();
    Err(format!("cannot execute {}: {e}", program.to_string_lossy()))
}

/// Marks every fd from `first` on close-on-exec.
fn close_from(first: i32) {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only sets flags.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            4 as libc::c_uint,
        )
    };
}

fn read_config(control: &mut File) -> Result<ChildConfig, String> {
    let mut len = [0u8; 4];
    control
        .read_exact(&mut len)
        .map_err(|e| format!("read config length: {e}"))?;
    let len = u32::from_le_bytes(len) as usize;
    if len > 16 << 20 {
        return Err(format!("config of {len} bytes is too large"));
    }
    let mut json = vec![0u8; len];
    control
        .read_exact(&mut json)
        .map_err(|e| format!("read config: {e}"))?;
    serde_json::from_slice(&json).map_err(|e| format!("config: {e}"))
}

/// Mounts the spec's mounts under `rootfs` and makes it the root.
fn build_root(rootfs: &Path, mounts: &[Mount]) -> Result<(), String> {
    // Nothing mounted here propagates back to the agent.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("make / private: {e}"))?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("bind {}: {e}", rootfs.display()))?;
    let mut dev_is_tmpfs = false;
    for m in mounts {
        mount_one(rootfs, m)?;
        if m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs") {
            dev_is_tmpfs = true;
        }
    }
    if dev_is_tmpfs {
        populate_dev(&secure_join(rootfs, Path::new("/dev"))?)?;
    }
    enter_root(rootfs)
}

/// Writes the spec's sysctls (`net.ipv4.ip_forward` → /proc/sys/net/ipv4/
/// ip_forward) in the container's /proc, before /proc/sys is made
/// read-only; one that cannot be written fails the container.
fn write_sysctls(sysctl: &[(String, String)]) -> Result<(), String> {
    for (key, value) in sysctl {
        if key.is_empty() || key.split('.').any(|part| part.is_empty() || part == "..") {
            return Err(format!("invalid sysctl name {key:?}"));
        }
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| format!("sysctl {key}={value}: {e}"))?;
    }
    Ok(())
}

/// Hides `masked` paths and makes `readonly` ones read-only, in the new
/// root; paths that do not exist are skipped (as runc does).
fn restrict_paths(masked: &[String], readonly: &[String]) -> Result<(), String> {
    for p in masked {
        let Ok(meta) = std::fs::metadata(p) else {
            continue;
        };
        let result = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                p.as_str(),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some("/dev/null"),
                p.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        result.map_err(|e| format!("mask {p}: {e}"))?;
    }
    for p in readonly {
        if std::fs::symlink_metadata(p).is_err() {
            continue;
        }
        mount(
            Some(p.as_str()),
            p.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .and_then(|()| {
            mount(
                None::<&str>,
                p.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
                None::<&str>,
            )
        })
        .map_err(|e| format!("read-only {p}: {e}"))?;
    }
    Ok(())
}

fn mount_one(rootfs: &Path, m: &Mount) -> Result<(), String> {
    let dest = secure_join(rootfs, m.destination())?;
    let opts = MountOptions::parse(m.options().as_deref().unwrap_or(&[]));
    let mut typ = m.typ().clone().unwrap_or_default();
    if opts.bind {
        typ = "bind".into();
    }
    // The guest has cgroup v2 only (whatever the host uses).
    if typ == "cgroup" {
        typ = "cgroup2".into();
    }
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(&typ));
    if typ == "bind" {
        let meta = std::fs::metadata(&source)
            .map_err(|e| format!("bind mount source {}: {e}", source.display()))?;
        make_target(&dest, meta.is_dir())?;
        let rec = if opts.recursive {
            MsFlags::MS_REC
        } else {
            MsFlags::empty()
        };
        mount(
            Some(&source),
            &dest,
            None::<&str>,
            MsFlags::MS_BIND | rec,
            None::<&str>,
        )
        .map_err(|e| {
            format!(
                "bind {} on {}: {e}",
                source.display(),
                m.destination().display()
            )
        })?;
        if !opts.flags.is_empty() {
            mount(
                None::<&str>,
                &dest,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | opts.flags,
                None::<&str>,
            )
            .map_err(|e| format!("remount {}: {e}", m.destination().display()))?;
        }
    } else {
        make_target(&dest, true)?;
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        mount(Some(&source), &dest, Some(typ.as_str()), opts.flags, data)
            .map_err(|e| format!("mount {typ} on {}: {e}", m.destination().display()))?;
    }
    if opts.propagation != MsFlags::empty() {
        mount(
            None::<&str>,
            &dest,
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .map_err(|e| format!("propagation of {}: {e}", m.destination().display()))?;
    }
    Ok(())
}

fn make_target(dest: &Path, dir: bool) -> Result<(), String> {
    if dir {
        std::fs::create_dir_all(dest).map_err(|e| format!("mkdir {}: {e}", dest.display()))
    } else {
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("mkdir {}: {e}", parent.display()))?;
        }
        if !dest.exists() {
            File::create(dest).map_err(|e| format!("create {}: {e}", dest.display()))?;
        }
        Ok(())
    }
}

/// The device nodes every container gets (as runc does) on a tmpfs /dev.
fn populate_dev(dev: &Path) -> Result<(), String> {
    use nix::sys::stat::{makedev, mknod, Mode, SFlag};
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        let path = dev.join(name);
        mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| format!("mknod /dev/{name}: {e}"))?;
        // mknod applies the umask.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .map_err(|e| format!("chmod /dev/{name}: {e}"))?;
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("ptmx", "pts/ptmx"),
    ] {
        let path = dev.join(link);
        if path.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(target, &path)
                .map_err(|e| format!("symlink /dev/{link}: {e}"))?;
        }
    }
    Ok(())
}

/// pivot_root into `rootfs`; where the current root cannot be pivoted (an
/// initramfs), moves `rootfs` over it and chroots.
fn enter_root(rootfs: &Path) -> Result<(), String> {
    chdir(rootfs).map_err(|e| format!("chdir {}: {e}", rootfs.display()))?;
    match pivot_root(".", ".") {
        Ok(()) => {
            // The old root is stacked on the new one: detach it.
            mount(
                None::<&str>,
                ".",
                None::<&str>,
                MsFlags::MS_SLAVE | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| format!("old root private: {e}"))?;
            umount2(".", MntFlags::MNT_DETACH).map_err(|e| format!("detach old root: {e}"))?;
        }
        // No chroot fallback (an initramfs root cannot be pivoted away
        // from): a container with CAP_SYS_CHROOT can leave a chroot. The
        // guest's init gives the agent a tmpfs root for this.
        Err(e) => return Err(format!("pivot_root {}: {e}", rootfs.display())),
    }
    chdir("/").map_err(|e| format!("chdir /: {e}"))
}

/// Joins the IPC, UTS, cgroup and mount namespaces of `init_pid`.
fn join(init_pid: i32) -> Result<(), String> {
    let mut fds: Vec<(OwnedFd, CloneFlags, &str)> = Vec::new();
    for (name, flag) in [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let path = format!("/proc/{init_pid}/ns/{name}");
        let file = File::open(&path).map_err(|e| format!("open {path}: {e}"))?;
        fds.push((file.into(), flag, name));
    }
    for (fd, flag, name) in &fds {
        setns(fd.as_fd(), *flag)
            .map_err(|e| format!("join the container's {name} namespace: {e}"))?;
    }
    Ok(())
}

/// Opens a pty in the container's devpts, sends the master to the agent
/// over [`CONSOLE_FD`], and makes the slave stdio and the controlling
/// terminal of a new session.
fn open_console() -> Result<(), String> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let master = posix_openpt(nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY)
        .map_err(|e| format!("open /dev/ptmx in the container: {e}"))?;
    grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let name = ptsname_r(&master).map_err(|e| format!("ptsname: {e}"))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_NOCTTY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("open {name}: {e}"))?;
    let fds = [master.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(b"m")];
    sendmsg::<()>(CONSOLE_FD, &iov, &cmsg, MsgFlags::empty(), None)
        .map_err(|e| format!("send the terminal to the agent: {e}"))?;
    drop(master);
    // SAFETY: CONSOLE_FD was given to this process and is not used again.
    drop(unsafe { OwnedFd::from_raw_fd(CONSOLE_FD) });
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    for target in 0..3 {
        // SAFETY: dup2 between fds this process owns.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(format!(
                "dup2 the terminal: {}",
                std::io::Error::last_os_error()
            ));
        }
    }
    // SAFETY: TIOCSCTTY on fd 0 with an integer argument.
    let rc = unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) };
    if rc != 0 {
        return Err(format!(
            "set the controlling terminal: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn set_rlimits(process: &Process) -> Result<(), String> {
    for limit in process.rlimits().as_deref().unwrap_or(&[]) {
        let resource = crate::mountopts::rlimit_resource(limit.typ());
        nix::sys::resource::setrlimit(resource, limit.soft(), limit.hard()).map_err(|e| {
            format!(
                "setrlimit {:?} {}/{}: {e}",
                limit.typ(),
                limit.soft(),
                limit.hard()
            )
        })?;
    }
    Ok(())
}

/// The process's environment, with PATH and HOME filled in when missing.
fn environment(process: &Process) -> Vec<CString> {
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        let uid = process.user().uid();
        let home = passwd::home_of(Path::new("/etc/passwd"), uid).unwrap_or_else(|| "/".into());
        env.push(format!("HOME={home}"));
    }
    env.into_iter()
        .filter_map(|e| CString::new(e).ok())
        .collect()
}

fn args(process: &Process) -> Result<Vec<CString>, String> {
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err("the process has no args".into());
    }
    args.into_iter()
        .map(|a| CString::new(a).map_err(|_| "an argument contains a NUL byte".to_string()))
        .collect()
}

/// args[0] as a path: as given when it has a '/', else found in PATH.
fn resolve_program(process: &Process, env: &[CString]) -> Result<CString, String> {
    let args = process.args().clone().unwrap_or_default();
    let first = args.first().ok_or("the process has no args")?;
    let found = if first.contains('/') {
        Some(PathBuf::from(first))
    } else {
        let path = env
            .iter()
            .find_map(|e| e.to_str().ok()?.strip_prefix("PATH=").map(str::to_string))
            .unwrap_or_default();
        path.split(':')
            .map(|dir| Path::new(dir).join(first))
            .find(|p| {
                p.metadata()
                    .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false)
            })
    };
    let found = found.ok_or_else(|| format!("executable {first:?} not found in PATH"))?;
    CString::new(found.as_os_str().as_bytes()).map_err(|_| "program path contains NUL".into())
}

fn switch_user(process: &Process) -> Result<(), String> {
    let user = process.user();
    let groups: Vec<Gid> = user
        .additional_gids()
        .as_deref()
        .unwrap_or(&[])
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    let capabilities = process.capabilities().as_ref();
    crate::capabilities::before_user_switch(capabilities)?;
    setgroups(&groups).map_err(|e| format!("setgroups {groups:?}: {e}"))?;
    setgid(Gid::from_raw(user.gid())).map_err(|e| format!("setgid {}: {e}", user.gid()))?;
    setuid(Uid::from_raw(user.uid())).map_err(|e| format!("setuid {}: {e}", user.uid()))?;
    crate::capabilities::after_user_switch(capabilities)
}

/// Signal dispositions and mask as a fresh process expects them: Rust
/// ignores SIGPIPE at start-up, whatever started the agent may have ignored
/// others (real-time ones included), and an ignored signal stays ignored
/// across exec.
fn default_signals() {
    for signal in 1..=64 {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        reset_signal(signal);
    }
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// The kernel's `struct sigaction` (x86-64), for `rt_sigaction`.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// Sets `signal` to SIG_DFL with the raw system call: glibc's `sigaction`
/// refuses the two real-time signals it reserves for itself.
fn reset_signal(signal: i32) {
    let action = KernelSigaction {
        handler: libc::SIG_DFL,
        flags: 0,
        restorer: 0,
        mask: 0,
    };
    // SAFETY: rt_sigaction reads a valid kernel sigaction; the old action
    // is not asked for; the size is the kernel's 8-byte signal set.
    let _ = unsafe {
        libc::syscall(
            libc::SYS_rt_sigaction,
            signal,
            &action as *const KernelSigaction,
            std::ptr::null_mut::<KernelSigaction>(),
            8usize,
        )
    };
}
