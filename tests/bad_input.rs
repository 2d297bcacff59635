//! Every bad input gives an error naming the bad value, never a panic, both
//! from the library and from `corral run` (one line on stderr, status 1).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use corral_vmm::{VmConfig, Vmm};

/// The error chain as one line, as the CLI prints it.
fn create_error(config: VmConfig) -> String {
    match Vmm::create(config) {
        Ok(_) => panic!("a bad configuration was accepted"),
        Err(e) => {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            msg
        }
    }
}

fn cli_error(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_corral"))
        .arg("run")
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(out.stdout.is_empty(), "no guest output expected");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line expected, got: {stderr}");
    assert!(lines[0].starts_with("corral: error: "), "{stderr}");
    stderr
}

struct Case {
    name: &'static str,
    config: Box<dyn Fn() -> VmConfig>,
    cli: Vec<String>,
    expect: Vec<String>,
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn cases() -> Vec<Case> {
    let dir = common::scratch_dir("bad-input");
    let guest = common::test_guest();
    let guest_s = guest.display().to_string();
    let script = write(&dir, "not-a-kernel.sh", b"#!/bin/sh\necho hello\n");
    let elf = std::fs::read(&guest).unwrap();
    let truncated = write(&dir, "truncated.elf", &elf[..elf.len() / 2]);
    let big_initrd = dir.join("big-initrd.img");
    let f = std::fs::File::create(&big_initrd).unwrap();
    f.set_len(64 << 20).unwrap(); // sparse: costs no disk
    let long_cmdline = "x".repeat(3000);

    let with = |f: Box<dyn Fn(&mut VmConfig)>| -> Box<dyn Fn() -> VmConfig> {
        let guest = guest.clone();
        Box::new(move || {
            let mut c = VmConfig::new(guest.clone());
            c.console.output = corral_vmm::ConsoleOutput::Discard;
            f(&mut c);
            c
        })
    };
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    vec![
        Case {
            name: "missing kernel file",
            config: with(Box::new(|c| c.kernel = "/nonexistent/vmlinux".into())),
            cli: s(&["--kernel", "/nonexistent/vmlinux"]),
            expect: s(&["kernel /nonexistent/vmlinux", "No such file"]),
        },
        Case {
            name: "neither ELF nor bzImage",
            config: with({
                let p = script.clone();
                Box::new(move |c| c.kernel = p.clone().into())
            }),
            cli: vec!["--kernel".into(), script.display().to_string()],
            expect: vec![
                script.display().to_string(),
                "neither an ELF vmlinux nor a bzImage".into(),
            ],
        },
        Case {
            name: "truncated ELF",
            config: with({
                let p = truncated.clone();
                Box::new(move |c| c.kernel = p.clone().into())
            }),
            cli: vec!["--kernel".into(), truncated.display().to_string()],
            expect: vec![truncated.display().to_string(), "is truncated".into()],
        },
        Case {
            name: "zero vCPUs",
            config: with(Box::new(|c| c.vcpus = 0)),
            cli: s(&["--kernel", &guest_s, "--cpus", "0"]),
            expect: s(&["vCPU count 0"]),
        },
        Case {
            name: "more vCPUs than KVM allows",
            config: with(Box::new(|c| c.vcpus = 2000)),
            cli: s(&["--kernel", &guest_s, "--cpus", "2000"]),
            expect: s(&["vCPU count 2000", "KVM allows"]),
        },
        Case {
            name: "zero memory",
            config: with(Box::new(|c| c.memory_mib = 0)),
            cli: s(&["--kernel", &guest_s, "--memory", "0"]),
            expect: s(&["memory 0 MiB"]),
        },
        Case {
            name: "absurdly large memory",
            config: with(Box::new(|c| c.memory_mib = 1 << 40)),
            cli: s(&["--kernel", &guest_s, "--memory", "1099511627776"]),
            expect: s(&["memory 1099511627776 MiB is more than this host's"]),
        },
        Case {
            name: "initrd larger than guest memory",
            config: with({
                let p = big_initrd.clone();
                Box::new(move |c| {
                    c.memory_mib = 32;
                    c.initrd = Some(p.clone().into());
                })
            }),
            cli: vec![
                "--kernel".into(),
                guest_s.clone(),
                "--memory".into(),
                "32".into(),
                "--initrd".into(),
                big_initrd.display().to_string(),
            ],
            expect: vec![
                big_initrd.display().to_string(),
                "does not fit in guest memory".into(),
            ],
        },
        Case {
            name: "command line over the limit",
            config: with({
                let l = long_cmdline.clone();
                Box::new(move |c| c.cmdline = l.clone())
            }),
            cli: vec![
                "--kernel".into(),
                guest_s.clone(),
                "--cmdline".into(),
                long_cmdline,
            ],
            expect: s(&["command line is 3000 bytes; the limit is 2047 bytes"]),
        },
    ]
}

#[test]
fn bad_inputs_are_named_not_panicked_on() {
    let _kvm = common::kvm();
    for case in cases() {
        let lib = create_error((case.config)());
        let cli: Vec<&str> = case.cli.iter().map(String::as_str).collect();
        let cli = cli_error(&cli);
        for needle in &case.expect {
            assert!(
                lib.contains(needle.as_str()),
                "{}: library error `{lib}` lacks `{needle}`",
                case.name
            );
            assert!(
                cli.contains(needle.as_str()),
                "{}: CLI error `{cli}` lacks `{needle}`",
                case.name
            );
        }
        eprintln!("{:32} → {}", case.name, cli.trim());
    }
}
