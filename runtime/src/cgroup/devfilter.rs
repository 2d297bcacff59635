//! Device rules on cgroup v2: an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the constrained cgroup (v2 has
//! no `devices.allow`/`devices.deny`; runc and systemd do the same).
//!
//! The rules keep their v1 meaning, applied in order: a rule of kind
//! [`DeviceKind::All`] resets the default (allow or deny every device) and
//! drops the exceptions so far; any other rule is an exception, and the
//! last exception matching a request decides it. An allow exception
//! matches when the request's access (r, w, m) is within the rule's; a deny
//! exception when they share any access. The program tests the exceptions
//! from the last to the first, then returns the default. A rule set that
//! denies nothing needs no program and gets none.
//!
//! The program is attached with `BPF_F_ALLOW_MULTI`: an access must pass
//! every program on the way from the root (systemd's included), so it only
//! narrows what the cgroup already had. The attachment holds the program;
//! the cgroup's removal at teardown releases both. A program that cannot be
//! loaded or attached fails the sandbox: device rules are never dropped.
//!
//! Hand-written because no well-kept crate fits: cgroups-rs 0.5 (our cgroup
//! crate) has no v2 device filter; youki's `libcgroups` has one but brings
//! its whole cgroup manager and libbpf; aya needs a BPF toolchain to build
//! programs. The program here is a few dozen fixed instructions and two
//! `bpf(2)` calls.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

use super::devices::{DeviceKind, DeviceRule};
use super::error::CgroupError;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// `struct bpf_cgroup_dev_ctx`: `access_type` (type in the low 16 bits,
/// access above), `major`, `minor`, each a `u32`.
const DEV_BLOCK: i32 = 1;
const DEV_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;
const ACC_ALL: i32 = ACC_MKNOD | ACC_READ | ACC_WRITE;

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub(crate) struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

// Opcodes used (class | op | source).
const LDX_W: u8 = 0x61; // dst = *(u32 *)(src + off)
const AND_K: u8 = 0x57; // dst &= imm (64-bit)
const RSH_K: u8 = 0x77; // dst >>= imm
const MOV_K: u8 = 0xb7; // dst = imm
const MOV_X: u8 = 0xbf; // dst = src
const JNE_K: u8 = 0x55; // if dst != imm: pc += off
const JNE32_K: u8 = 0x56; // if (u32)dst != (u32)imm: pc += off
const JEQ_K: u8 = 0x15; // if dst == imm: pc += off
const JSET_K: u8 = 0x45; // if dst & imm: pc += off
const EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        regs: (dst & 0xf) | (src << 4),
        off,
        imm,
    }
}

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |bits, c| {
        bits | match c {
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            'm' => ACC_MKNOD,
            _ => 0,
        }
    })
}

/// The default and the exceptions, in order, after applying resets.
fn effective(rules: &[DeviceRule]) -> (bool, Vec<&DeviceRule>) {
    let mut allow_by_default = true;
    let mut exceptions = Vec::new();
    for rule in rules {
        if rule.kind == DeviceKind::All {
            allow_by_default = rule.allow;
            exceptions.clear();
        } else {
            exceptions.push(rule);
        }
    }
    (allow_by_default, exceptions)
}

/// The program enforcing `rules`, or `None` when they deny nothing.
pub(crate) fn program(rules: &[DeviceRule]) -> Option<Vec<Insn>> {
    let (allow_by_default, exceptions) = effective(rules);
    if allow_by_default && exceptions.iter().all(|r| r.allow) {
        return None;
    }
    // r2 = type, r3 = access, r4 = major, r5 = minor (r1: the context).
    let mut code = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(AND_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(RSH_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for rule in exceptions.iter().rev() {
        // Each test jumps past the block when the rule does not match.
        let mut tests: Vec<(u8, u8, i32)> = Vec::new();
        match rule.kind {
            DeviceKind::Block => tests.push((JNE_K, 2, DEV_BLOCK)),
            DeviceKind::Char => tests.push((JNE_K, 2, DEV_CHAR)),
            DeviceKind::All => {}
        }
        let access = access_bits(&rule.access);
        let mut deny_access_test = false;
        if access != ACC_ALL {
            if rule.allow {
                // Any access outside the rule's: no match.
                tests.push((JSET_K, 3, !access & ACC_ALL));
            } else {
                deny_access_test = true;
            }
        }
        let numbers = [(4u8, rule.major), (5u8, rule.minor)];
        let block_len = tests.len()
            + usize::from(deny_access_test) * 3
            + numbers.iter().filter(|(_, n)| n.is_some()).count()
            + 2;
        let mut block = Vec::with_capacity(block_len);
        let skip = |at: usize| i16::try_from(block_len - at - 1).unwrap_or(i16::MAX);
        for (op, reg, imm) in tests {
            block.push(insn(op, reg, 0, skip(block.len()), imm));
        }
        if deny_access_test {
            // No access in common with the rule's: no match.
            block.push(insn(MOV_X, 1, 3, 0, 0));
            block.push(insn(AND_K, 1, 0, 0, access));
            block.push(insn(JEQ_K, 1, 0, skip(block.len()), 0));
        }
        for (reg, number) in numbers {
            if let Some(n) = number {
                // A 32-bit comparison: a 64-bit one would sign-extend the
                // immediate and miss numbers from 2^31 up.
                let imm = i32::from_ne_bytes(n.to_ne_bytes());
                block.push(insn(JNE32_K, reg, 0, skip(block.len()), imm));
            }
        }
        block.push(insn(MOV_K, 0, 0, 0, i32::from(rule.allow)));
        block.push(insn(EXIT, 0, 0, 0, 0));
        debug_assert_eq!(block.len(), block_len, "jump offsets assume this length");
        code.extend(block);
    }
    code.push(insn(MOV_K, 0, 0, 0, i32::from(allow_by_default)));
    code.push(insn(EXIT, 0, 0, 0, 0));
    Some(code)
}

/// `union bpf_attr` for `BPF_PROG_LOAD` (its leading fields).
#[repr(C)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` for `BPF_PROG_ATTACH`.
#[repr(C)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads `code`; on failure the verifier's log is in the error.
fn load(code: &[Insn], dir: &Path) -> Result<OwnedFd, CgroupError> {
    const LICENSE: &CStr = c"Apache-2.0";
    let mut log = vec![0u8; 64 * 1024];
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"corral_device");
    let attempt = |with_log: bool, log: &mut [u8]| -> io::Result<OwnedFd> {
        let attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
            insn_cnt: u32::try_from(code.len()).unwrap_or(u32::MAX),
            insns: code.as_ptr() as u64,
            license: LICENSE.as_ptr() as u64,
            log_level: u32::from(with_log),
            log_size: if with_log {
                u32::try_from(log.len()).unwrap_or(0)
            } else {
                0
            },
            log_buf: if with_log { log.as_mut_ptr() as u64 } else { 0 },
            kern_version: 0,
            prog_flags: 0,
            prog_name: name,
            prog_ifindex: 0,
            expected_attach_type: BPF_CGROUP_DEVICE,
        };
        // SAFETY: `attr` is a properly laid out prefix of `union bpf_attr`
        // for BPF_PROG_LOAD, and the size passed is its size (the kernel
        // zero-fills the rest). Every pointer in it — the instructions, the
        // NUL-terminated license, the log buffer with its length — is valid
        // for the duration of the call, which only reads the first two and
        // writes at most `log_size` bytes into the third.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_PROG_LOAD,
                &attr as *const ProgLoadAttr,
                std::mem::size_of::<ProgLoadAttr>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf() returned a bad fd"))?;
        // SAFETY: BPF_PROG_LOAD succeeded and returned a new file
        // descriptor that nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    match attempt(false, &mut log) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            // Again with the verifier's log, for the error.
            let source = attempt(true, &mut log).err().unwrap_or(first);
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let verifier = String::from_utf8_lossy(&log[..end]).trim().to_string();
            tracing::debug!(dir = %dir.display(), %verifier, "eBPF device program refused");
            Err(CgroupError::DeviceProgram {
                op: "load",
                dir: dir.to_path_buf(),
                verifier,
                source,
            })
        }
    }
}

/// Loads the program for `rules` (if they deny anything) and attaches it
/// to the cgroup `dir`. Returns whether a program was attached.
pub(crate) fn apply(dir: &Path, rules: &[DeviceRule]) -> Result<bool, CgroupError> {
    let Some(code) = program(rules) else {
        return Ok(false);
    };
    let prog = load(&code, dir)?;
    let attach_error = |source| CgroupError::DeviceProgram {
        op: "attach",
        dir: dir.to_path_buf(),
        verifier: String::new(),
        source,
    };
    let cgroup = File::open(dir).map_err(attach_error)?;
    let attr = ProgAttachAttr {
        target_fd: u32::try_from(cgroup.as_raw_fd()).unwrap_or(u32::MAX),
        attach_bpf_fd: u32::try_from(prog.as_raw_fd()).unwrap_or(u32::MAX),
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` is the BPF_PROG_ATTACH layout of `union bpf_attr`,
    // passed with its size; both descriptors in it are open for the whole
    // call; the kernel only reads it.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &attr as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if rc != 0 {
        return Err(attach_error(io::Error::last_os_error()));
    }
    // The attachment keeps the program; our descriptors close here.
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a program the way the kernel would, for the opcodes used here.
    fn run(code: &[Insn], kind: i32, access: i32, major: u32, minor: u32) -> u64 {
        let ctx = [u32::try_from(kind | (access << 16)).unwrap(), major, minor];
        let mut r = [0u64; 11];
        let mut pc = 0usize;
        loop {
            let i = code[pc];
            let (dst, src) = (usize::from(i.regs & 0xf), usize::from(i.regs >> 4));
            let imm = i64::from(i.imm) as u64;
            let mut next = pc + 1;
            let jump = |taken: bool| {
                if taken {
                    pc + 1 + usize::try_from(i.off).unwrap()
                } else {
                    pc + 1
                }
            };
            match i.code {
                LDX_W => {
                    assert_eq!(src, 1, "loads only from the context");
                    r[dst] = u64::from(ctx[usize::try_from(i.off).unwrap() / 4]);
                }
                AND_K => r[dst] &= imm,
                RSH_K => r[dst] >>= imm,
                MOV_K => r[dst] = imm,
                MOV_X => r[dst] = r[src],
                JNE_K => next = jump(r[dst] != imm),
                JNE32_K => next = jump(r[dst] as u32 != i.imm as u32),
                JEQ_K => next = jump(r[dst] == imm),
                JSET_K => next = jump(r[dst] & imm != 0),
                EXIT => return r[0],
                other => panic!("opcode {other:#x} not expected"),
            }
            pc = next;
        }
    }

    fn rule(
        allow: bool,
        kind: DeviceKind,
        major: Option<u32>,
        minor: Option<u32>,
        access: &str,
    ) -> DeviceRule {
        DeviceRule {
            allow,
            kind,
            major,
            minor,
            access: access.to_string(),
        }
    }

    const RW: i32 = ACC_READ | ACC_WRITE;

    #[test]
    fn rules_that_deny_nothing_need_no_program() {
        assert!(program(&[]).is_none());
        assert!(program(&[rule(true, DeviceKind::Char, Some(10), Some(232), "rwm")]).is_none());
        // A deny-all followed by allow-all resets to "allow everything".
        assert!(program(&[
            DeviceRule::deny_all(),
            rule(true, DeviceKind::All, None, None, "rwm")
        ])
        .is_none());
    }

    #[test]
    fn a_whitelist_allows_only_its_devices() {
        let code = program(&[
            DeviceRule::deny_all(),
            rule(true, DeviceKind::Char, Some(10), Some(232), "rwm"),
            rule(true, DeviceKind::Block, Some(8), None, "r"),
        ])
        .unwrap();
        assert_eq!(run(&code, DEV_CHAR, RW, 10, 232), 1, "/dev/kvm");
        assert_eq!(run(&code, DEV_CHAR, RW, 1, 3), 0, "/dev/null");
        assert_eq!(run(&code, DEV_BLOCK, ACC_READ, 8, 16), 1, "sdb read");
        assert_eq!(run(&code, DEV_BLOCK, RW, 8, 16), 0, "sdb write");
        assert_eq!(run(&code, DEV_CHAR, ACC_READ, 8, 16), 0, "char 8:16");
    }

    #[test]
    fn the_last_matching_exception_wins_and_deny_matches_any_shared_access() {
        let code = program(&[
            rule(false, DeviceKind::Char, Some(1), None, "w"),
            rule(true, DeviceKind::Char, Some(1), Some(3), "rw"),
        ])
        .unwrap();
        assert_eq!(run(&code, DEV_CHAR, RW, 1, 3), 1, "later allow wins");
        assert_eq!(run(&code, DEV_CHAR, RW, 1, 5), 0, "write on 1:5 denied");
        assert_eq!(
            run(&code, DEV_CHAR, ACC_READ, 1, 5),
            1,
            "read on 1:5 not denied"
        );
        assert_eq!(run(&code, DEV_BLOCK, RW, 1, 5), 1, "block 1:5 untouched");
        let big = program(&[
            DeviceRule::deny_all(),
            rule(true, DeviceKind::Char, Some(u32::MAX), Some(0), "r"),
        ])
        .unwrap();
        assert_eq!(run(&big, DEV_CHAR, ACC_READ, u32::MAX, 0), 1);
    }
}
