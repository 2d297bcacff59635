//! The agent binary as PID 1 of fresh namespaces on this machine, driven by
//! the runtime's client through the hybrid vsock handshake, running
//! containers from a real ext4 image on a loop device (see `support`). The
//! scenarios are shared with the VM test (`tests/agent_vm.rs`). Needs root,
//! `unshare`, `losetup`, `mkfs.ext4` and busybox; fails loudly without them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;

use support::scenarios;
use support::*;

fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

struct Fixture {
    _image: LoopImage,
    agent: Agent,
    storage: corral_runtime::agent::Storage,
}

fn fixture(name: &str) -> Fixture {
    let dir = scratch(name);
    let image = LoopImage::busybox(&dir);
    let agent = Agent::start(&dir, "1");
    let storage = image.storage();
    Fixture {
        _image: image,
        agent,
        storage,
    }
}

#[test]
fn output_is_byte_exact_and_exit_statuses_are_kept() {
    let f = fixture("basic");
    block_on(async {
        let c = f.agent.client().await;
        c.create_sandbox("sb", "").await.unwrap();
        scenarios::output_and_exit_statuses(&c, &f.storage).await;
        scenarios::clean_signal_state(&c, &f.storage).await;
        scenarios::sysctl_and_oom_score(&c, &f.storage).await;
    });
}

#[test]
fn stdin_and_large_stdout_are_checksum_exact() {
    let f = fixture("streams");
    block_on(async {
        let c = f.agent.client().await;
        scenarios::stdin_and_large_stdout(&c, &f.storage).await;
    });
}

#[test]
fn a_terminal_sees_its_window_resized() {
    let f = fixture("tty");
    block_on(async {
        let c = f.agent.client().await;
        scenarios::terminal(&c, &f.storage).await;
    });
}

#[test]
fn exec_joins_a_running_container_and_a_background_child_cannot_hold_output() {
    let f = fixture("exec");
    block_on(async {
        let c = f.agent.client().await;
        scenarios::exec_and_background_child(&c, &f.storage).await;
    });
}

#[test]
fn users_and_capabilities_follow_the_spec() {
    let f = fixture("caps");
    block_on(async {
        let c = f.agent.client().await;
        scenarios::users_and_capabilities(&c, &f.storage).await;
    });
}

#[test]
fn bad_requests_get_clear_errors_and_the_agent_keeps_serving() {
    let f = fixture("bad");
    block_on(async {
        let c = f.agent.client().await;
        // This machine's cgroup2 has no memory controller.
        scenarios::bad_requests(&c, &f.storage, false).await;
    });
}

#[test]
fn a_hundred_containers_in_a_row_leak_nothing() {
    let f = fixture("hundred");
    block_on(async {
        let c = f.agent.client().await;
        // One first, so lazily created state exists before counting.
        scenarios::many_in_a_row(&c, &f.storage, 1).await;
        let before = f.agent.footprint();
        let took = scenarios::many_in_a_row(&c, &f.storage, 100).await;
        let after = f.agent.footprint();
        assert_eq!(after, before, "(mounts, fds, children, cgroups) grew");
        assert_eq!(after.3, 0, "container cgroups left");
        println!(
            "100 containers created, run, removed: {took:?} ({:?} each); footprint {after:?}",
            took / 100
        );
        let (median, max) = scenarios::exec_round_trips(&c, &f.storage, 50).await;
        println!("exec round trip (ExecProcess + WaitProcess of `true`), 50 runs: median {median:?}, max {max:?}");
        assert_eq!(f.agent.footprint(), before, "exec leaked");
    });
}

#[test]
fn finished_execs_are_forgotten_and_free_their_fds() {
    use scenarios::{process, read_all, spec};
    let f = fixture("execfree");
    block_on(async {
        let c = f.agent.client().await;
        c.create_container(
            "svc",
            &spec(&["sleep", "1000"], false, "b", ""),
            f.storage.clone(),
        )
        .await
        .unwrap();
        c.start("svc").await.unwrap();
        // Pipes and terminals, output read to the end, exit collected.
        let run = |i: usize| {
            let c = c.clone();
            async move {
                let id = format!("e{i}");
                let tty = i.is_multiple_of(5);
                c.exec("svc", &id, &process(&["echo", "x"], tty))
                    .await
                    .unwrap();
                let out = read_all(&c, "svc", &id, false).await;
                assert!(out.starts_with(b"x"), "{out:?}");
                read_all(&c, "svc", &id, true).await;
                assert_eq!(c.wait("svc", &id).await.unwrap().status, 0);
            }
        };
        for i in 0..5 {
            run(i).await;
        }
        let before = f.agent.footprint();
        for i in 5..65 {
            run(i).await;
        }
        assert_eq!(
            f.agent.footprint(),
            before,
            "(mounts, fds, children, cgroups) grew"
        );
        // A collected exec's id can be used again.
        run(0).await;
        c.remove("svc").await.unwrap();
    });
}
