//! The guest agent in a real VM: Corral boots the default guest kernel with
//! the initramfs's init handing PID 1 to `corral-agent` (`corral.agent` on
//! the command line), gives it the container rootfs as a virtio-blk disk
//! (serial `rootfs`, an ext4 busybox image), and the runtime's client runs
//! the agent's scenarios (`guest-agent/tests/support/scenarios.rs`, the
//! same ones the host-process tests run) through Corral's virtio-vsock
//! (hybrid socket, `CONNECT 1024`). Linux user space needs hardware KVM:
//! on this machine the nested lane's L1 provides it.
//!
//! Nothing timed in L1 is a performance figure (it is emulated).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../guest-agent/tests/support/image.rs"]
mod image;
#[path = "support/nested/mod.rs"]
mod nested;
#[path = "../guest-agent/tests/support/scenarios.rs"]
mod scenarios;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use corral_runtime::agent::{AgentClient, Storage};

const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// Runs `vm_…` below inside L1 (built kernel and initramfs first, here).
#[test]
fn lane_agent_runs_containers_in_a_vm() {
    common::guest_kernel("default");
    common::initramfs();
    let console = nested::run_own_tests_in_l1(
        "lane_agent_runs_containers_in_a_vm",
        &["vm_"],
        Duration::from_secs(900),
    );
    assert!(
        console.contains("test vm_agent_runs_the_container_scenarios ...")
            && console.contains("test vm_an_agent_that_cannot_start_powers_off_with_a_reason ...")
            && console.contains("test vm_corral_run_runs_one_container_and_returns_its_status ...")
            && console.contains("test result: ok. 3 passed;"),
        "{console}"
    );
}

/// The default kernel and the agent's initramfs; fails unless Linux user
/// space can run here (hardware KVM, or the nested lane's L1).
fn user_space_guest() -> (std::path::PathBuf, std::path::PathBuf) {
    assert!(
        nested::in_l1() || !common::is_pvm(),
        "Linux user space needs hardware KVM; this /dev/kvm is PVM: run lane_agent_runs_containers_in_a_vm"
    );
    (common::guest_kernel("default"), common::initramfs())
}

/// `corral run` of the default kernel's vmlinux with the agent's initramfs.
fn corral_run(kernel: &std::path::Path, initrd: &std::path::Path) -> Command {
    let mut cmd = Command::new(CORRAL);
    cmd.arg("run")
        .arg("--kernel")
        .arg(kernel.join("vmlinux"))
        .arg("--initrd")
        .arg(initrd);
    cmd
}

fn printk_time(console: &str, needle: &str) -> Option<f64> {
    console
        .lines()
        .filter(|l| l.contains(needle))
        .find_map(|line| {
            let rest = line.trim_start().strip_prefix('[')?;
            rest[..rest.find(']')?].trim().parse().ok()
        })
}

#[test]
#[ignore = "needs hardware KVM for Linux user space: lane_agent_runs_containers_in_a_vm runs it in the nested lane's L1"]
fn vm_agent_runs_the_container_scenarios() {
    let (kernel, initrd) = user_space_guest();
    // In L1, files that must outlive it (the guest console) go to the
    // lane's share.
    let dir = match std::env::var_os(nested::SHARE_ENV) {
        Some(share) => std::path::PathBuf::from(share).join("agent-vm"),
        None => common::scratch_dir("agent-vm"),
    };
    std::fs::create_dir_all(&dir).unwrap();
    let image = image::busybox_ext4(&dir);
    // Not on the 9p share: a Unix socket cannot live there.
    let vsock = common::scratch_dir("agent-vm-sock").join("v.sock");
    let _ = std::fs::remove_file(&vsock);
    let console_path = dir.join("console.log");
    let mut corral = corral_run(&kernel, &initrd)
        .arg("--cmdline")
        .arg(format!("{} corral.agent", corral_vmm::DEFAULT_CMDLINE))
        // One vCPU: nested IPIs through TCG's emulated SVM are where the lane
        // was seen to fault (a triple fault of L2's vcpu1 once in four runs).
        .args(["--cpus", "1", "--memory", "512"])
        .arg("--disk")
        .arg(format!("{},serial=rootfs", image.display()))
        .arg("--vsock")
        .arg(format!("3,{}", vsock.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&console_path).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut storage = Storage::new();
    storage.virtio_serial = "rootfs".into();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let started = Instant::now();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        runtime.block_on(async {
            // Short attempts, so a Corral that failed ends the wait at once.
            let c = loop {
                match AgentClient::connect(&vsock, 1024, Duration::from_secs(2)).await {
                    Ok(c) => break c,
                    Err(e) => {
                        let exited = corral.try_wait().unwrap();
                        assert!(exited.is_none(), "corral ended ({exited:?}) before the agent answered: {e}");
                        assert!(started.elapsed() < Duration::from_secs(180), "no agent within 180 s: {e}");
                    }
                }
            };
            println!("agent answered {:?} after corral started", started.elapsed());
            c.create_sandbox("vm", "corral-vm").await.unwrap();
            scenarios::output_and_exit_statuses(&c, &storage).await;
            scenarios::clean_signal_state(&c, &storage).await;
            scenarios::sysctl_and_oom_score(&c, &storage).await;
            scenarios::stdin_and_large_stdout(&c, &storage).await;
            eprintln!("scenario: terminal");
            scenarios::terminal(&c, &storage).await;
            eprintln!("scenario: exec");
            scenarios::exec_and_background_child(&c, &storage).await;
            scenarios::users_and_capabilities(&c, &storage).await;
            // The guest's cgroup2 has every controller: limits enforced.
            scenarios::bad_requests(&c, &storage, true).await;
            let took = scenarios::many_in_a_row(&c, &storage, 20).await;
            println!("20 containers in a row in the VM: {took:?} (emulated L1: not a performance figure)");
            c.destroy_sandbox(true).await.unwrap();
        })
    }));
    if result.is_err() {
        let _ = corral.kill();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = corral.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = corral.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let console = std::fs::read_to_string(&console_path).unwrap_or_default();
    if let Err(panic) = result {
        eprintln!("guest console:\n{console}");
        std::panic::resume_unwind(panic);
    }
    assert!(
        status.is_some_and(|s| s.success()),
        "corral: {status:?}\n{console}"
    );
    assert!(
        console.contains("corral-agent: listening on vsock://-1:1024"),
        "{console}"
    );
    assert!(
        console.contains("corral-agent: the host asked for a power-off"),
        "{console}"
    );
    let run_init = printk_time(&console, "Run /init");
    // The agent also logs its line to the kernel log: on printk's clock,
    // as `Run /init` is.
    let listening = printk_time(&console, "corral-agent: listening on vsock");
    println!("guest printk time: Run /init at {run_init:?} s, agent listening at {listening:?} s");
    assert!(run_init.is_some() && listening.is_some(), "{console}");
}

/// A guest agent that cannot start (here: a bad port on the kernel command
/// line) powers the VM off with its reason on the console, instead of
/// PID 1 exiting into a kernel panic.
#[test]
#[ignore = "needs hardware KVM for Linux user space: lane_agent_runs_containers_in_a_vm runs it in the nested lane's L1"]
fn vm_an_agent_that_cannot_start_powers_off_with_a_reason() {
    let (kernel, initrd) = user_space_guest();
    let out = corral_run(&kernel, &initrd)
        .arg("--cmdline")
        .arg(format!(
            "{} corral.agent corral.agent.port=notaport",
            corral_vmm::DEFAULT_CMDLINE
        ))
        .args(["--cpus", "1", "--memory", "256"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let console = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?}\n{console}", out.status);
    assert!(
        console.contains("corral-agent: cannot listen on vsock://-1:notaport")
            && console.contains("powering off"),
        "{console}"
    );
    assert!(!console.contains("Kernel panic"), "{console}");
}

/// `corral run --rootfs IMAGE -- CMD`: one container in a micro-VM from the
/// command line, its stdout and stderr here, its exit status Corral's.
#[test]
#[ignore = "needs hardware KVM for Linux user space: lane_agent_runs_containers_in_a_vm runs it in the nested lane's L1"]
fn vm_corral_run_runs_one_container_and_returns_its_status() {
    let (kernel, initrd) = user_space_guest();
    let dir = common::scratch_dir("corral-run-container");
    let image = image::busybox_ext4(&dir);
    let out = corral_run(&kernel, &initrd)
        .args(["--memory", "256"])
        .arg("--rootfs")
        .arg(&image)
        .args(["--env", "GREETING=hello from a container"])
        .args([
            "--",
            "sh",
            "-c",
            "echo $GREETING; hostname; echo oops >&2; exit 3",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello from a container\ncorral\n",
        "{stderr}"
    );
    assert!(stderr.contains("oops"), "{stderr}");

    // -i: stdin goes to the container (a line, then 1 MiB to its end);
    // without -i the container's stdin is closed at once.
    let run = |interactive: bool, script: &str, input: Vec<u8>| {
        let mut cmd = corral_run(&kernel, &initrd);
        cmd.args(["--memory", "256"]).arg("--rootfs").arg(&image);
        if interactive {
            cmd.arg("-i");
        }
        let mut child = cmd
            .args(["--", "sh", "-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        });
        let out = child.wait_with_output().unwrap();
        writer.join().unwrap();
        out
    };
    let mut input = b"hello\n".to_vec();
    input.extend(std::iter::repeat_n(b'z', 1 << 20));
    let out = run(true, "read x; echo got $x; wc -c", input.clone());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?} {stderr}", out.status);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "got hello\n1048576\n",
        "{stderr}"
    );
    let out = run(false, "wc -c", input);
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");
}
