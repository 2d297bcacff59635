//! The agent binary as PID 1 of fresh namespaces on this machine, driven by
//! the runtime's client through the hybrid vsock handshake, running
//! containers from a real ext4 image on a loop device (see `support`).
//! Needs root, `unshare`, `losetup`, `mkfs.ext4` and busybox; fails loudly
//! without them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::future::Future;
use std::time::{Duration, Instant};

use corral_protocol::ttrpc::Code;
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
        let spec = support::spec(
            &["echo", "hello  world", "\u{e9}"],
            false,
            "box1",
            "/corral/basic",
        );
        let pid = c
            .create_container("echo", &spec, f.storage.clone())
            .await
            .unwrap();
        assert!(pid > 1);
        c.start("echo").await.unwrap();
        let out = read_all(&c, "echo", "", false).await;
        assert_eq!(out, "hello  world \u{e9}\n".as_bytes());
        let exit = c.wait("echo", "").await.unwrap();
        assert_eq!((exit.status, exit.signaled), (0, false));
        // Kept until removed: a second wait gives the same.
        assert_eq!(c.wait("echo", "").await.unwrap().status, 0);
        c.remove("echo").await.unwrap();

        let spec = support::spec(
            &["sh", "-c", "echo to-stderr >&2; exit 3"],
            false,
            "box",
            "",
        );
        c.create_container("three", &spec, f.storage.clone())
            .await
            .unwrap();
        c.start("three").await.unwrap();
        assert_eq!(read_all(&c, "three", "", true).await, b"to-stderr\n");
        assert_eq!(c.wait("three", "").await.unwrap().status, 3);
        c.remove("three").await.unwrap();

        let spec = support::spec(&["sleep", "1000"], false, "box", "");
        c.create_container("killed", &spec, f.storage.clone())
            .await
            .unwrap();
        c.start("killed").await.unwrap();
        c.signal("killed", "", 9, false).await.unwrap();
        let exit = c.wait("killed", "").await.unwrap();
        assert_eq!((exit.status, exit.signaled), (137, true));
        c.remove("killed").await.unwrap();
    });
}

#[test]
fn stdin_and_large_stdout_are_checksum_exact() {
    let f = fixture("streams");
    block_on(async {
        let c = f.agent.client().await;
        // 1 MiB through cat, written and read at the same time.
        let input: Vec<u8> = (0..(1u32 << 20))
            .map(|i| (i * 7 + i / 4096) as u8)
            .collect();
        c.create_container("cat", &spec(&["cat"], false, "b", ""), f.storage.clone())
            .await
            .unwrap();
        c.start("cat").await.unwrap();
        let writer = async {
            c.write_stdin("cat", "", &input).await.unwrap();
            c.close_stdin("cat", "").await.unwrap();
        };
        let (_, out) = tokio::join!(writer, read_all(&c, "cat", "", false));
        assert_eq!(out.len(), input.len());
        assert!(out == input, "cat's output differs from its input");
        assert_eq!(c.wait("cat", "").await.unwrap().status, 0);
        c.remove("cat").await.unwrap();

        // 10 MiB of stdout.
        let size = 10 << 20;
        let script = format!("yes 0123456789abcdef | head -c {size}");
        c.create_container(
            "big",
            &spec(&["sh", "-c", &script], false, "b", ""),
            f.storage.clone(),
        )
        .await
        .unwrap();
        let started = Instant::now();
        c.start("big").await.unwrap();
        let out = read_all(&c, "big", "", false).await;
        let took = started.elapsed();
        let expected: Vec<u8> = b"0123456789abcdef\n"
            .iter()
            .copied()
            .cycle()
            .take(size)
            .collect();
        assert_eq!(out.len(), size);
        assert!(out == expected, "10 MiB of stdout differ");
        assert_eq!(c.wait("big", "").await.unwrap().status, 0);
        println!(
            "stdout throughput (host process, ReadStdout of up to 1 MiB): {:.0} MiB/s ({size} bytes in {took:?})",
            size as f64 / (1 << 20) as f64 / took.as_secs_f64()
        );
        c.remove("big").await.unwrap();
    });
}

#[test]
fn a_terminal_sees_its_window_resized() {
    let f = fixture("tty");
    block_on(async {
        let c = f.agent.client().await;
        let spec = support::spec(&["sh", "-c", "read go; stty size; tty"], true, "b", "");
        c.create_container("tty", &spec, f.storage.clone())
            .await
            .unwrap();
        c.start("tty").await.unwrap();
        c.resize("tty", "", 33, 77).await.unwrap();
        c.write_stdin("tty", "", b"go\n").await.unwrap();
        let out = String::from_utf8_lossy(&read_all(&c, "tty", "", false).await).into_owned();
        assert!(out.contains("33 77"), "{out:?}");
        assert!(out.contains("/dev/pts/0"), "{out:?}");
        assert_eq!(c.wait("tty", "").await.unwrap().status, 0);
        // No terminal: resizing is refused with a clear error.
        c.create_container("plain", &spec_plain(), f.storage.clone())
            .await
            .unwrap();
        let err = c.resize("plain", "", 10, 10).await.unwrap_err();
        assert_eq!(err.code(), Some(Code::INVALID_ARGUMENT), "{err}");
        c.remove("plain").await.unwrap();
        c.remove("tty").await.unwrap();
    });
}

fn spec_plain() -> Vec<u8> {
    spec(&["true"], false, "b", "")
}

#[test]
fn exec_joins_a_running_container_and_a_background_child_cannot_hold_output() {
    let f = fixture("exec");
    block_on(async {
        let c = f.agent.client().await;
        c.create_container(
            "svc",
            &spec(&["sleep", "1000"], false, "svc-host", ""),
            f.storage.clone(),
        )
        .await
        .unwrap();
        // Exec before start is refused.
        let err = c
            .exec("svc", "e0", &process(&["true"], false))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::FAILED_PRECONDITION), "{err}");
        c.start("svc").await.unwrap();
        c.exec(
            "svc",
            "e1",
            &process(&["sh", "-c", "hostname; cat /proc/1/cmdline; echo"], false),
        )
        .await
        .unwrap();
        let out = String::from_utf8_lossy(&read_all(&c, "svc", "e1", false).await).into_owned();
        assert_eq!(
            out, "svc-host\nsleep\u{0}1000\u{0}\n",
            "exec sees the container's hostname and PID 1"
        );
        assert_eq!(c.wait("svc", "e1").await.unwrap().status, 0);

        // The exec'd shell leaves a child holding stdout open: the host's
        // read still ends, within the agent's drain grace (1 s here).
        c.exec(
            "svc",
            "e2",
            &process(&["sh", "-c", "sleep 1000 & echo exec-done"], false),
        )
        .await
        .unwrap();
        let waited = Instant::now();
        let exit = c.wait("svc", "e2").await.unwrap();
        assert_eq!(exit.status, 0);
        let out = read_all(&c, "svc", "e2", false).await;
        assert_eq!(out, b"exec-done\n");
        assert!(
            waited.elapsed() < Duration::from_secs(5),
            "{:?}",
            waited.elapsed()
        );
        // A missing program is a clear error at exec.
        let err = c
            .exec("svc", "e3", &process(&["no-such-program"], false))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("\"no-such-program\" not found"),
            "{err}"
        );
        // `all` reaches the background sleep too.
        c.signal("svc", "", 9, true).await.unwrap();
        assert_eq!(c.wait("svc", "").await.unwrap().status, 137);
        c.remove("svc").await.unwrap();
    });
}

#[test]
fn bad_requests_get_clear_errors_and_the_agent_keeps_serving() {
    let f = fixture("bad");
    block_on(async {
        let c = f.agent.client().await;
        let err = c.start("nope").await.unwrap_err();
        assert_eq!(err.code(), Some(Code::NOT_FOUND), "{err}");
        assert!(err.to_string().contains("no container \"nope\""), "{err}");
        let err = c.wait("nope", "x").await.unwrap_err();
        assert_eq!(err.code(), Some(Code::NOT_FOUND), "{err}");
        let err = c
            .create_container("m", b"{not json", f.storage.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::INVALID_ARGUMENT), "{err}");
        assert!(err.to_string().contains("malformed OCI spec"), "{err}");
        let err = c
            .create_container("../x", &spec_plain(), f.storage.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(Code::INVALID_ARGUMENT), "{err}");
        let mut missing = corral_runtime::agent::Storage::new();
        missing.virtio_serial = "no-such-disk".into();
        let err = c
            .create_container("nodisk", &spec_plain(), missing)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("no block device with virtio serial \"no-such-disk\""),
            "{err}"
        );
        // A limit the guest cgroup cannot enforce (no memory controller in
        // this machine's cgroup2) is refused, not dropped.
        let mut limited: serde_json::Value = serde_json::from_slice(&spec_plain()).unwrap();
        limited["linux"]["resources"] = serde_json::json!({"memory": {"limit": 67108864}});
        let err = c
            .create_container(
                "limited",
                &serde_json::to_vec(&limited).unwrap(),
                f.storage.clone(),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .contains("memory limit 67108864 cannot be enforced"),
            "{err}"
        );
        // The systemd form of cgroupsPath is the host's business: the guest
        // uses cgroupfs and the container runs.
        let spec = support::spec(&["echo", "ok"], false, "b", "system.slice:corral:abc");
        c.create_container("sd", &spec, f.storage.clone())
            .await
            .unwrap();
        c.start("sd").await.unwrap();
        assert_eq!(read_all(&c, "sd", "", false).await, b"ok\n");
        assert_eq!(c.wait("sd", "").await.unwrap().status, 0);
        let err = c.start("sd").await.unwrap_err();
        assert_eq!(err.code(), Some(Code::FAILED_PRECONDITION), "{err}");
        let stats = c.stats("sd").await.unwrap();
        assert!(stats.cpu_usage_usec > 0, "{stats:?}");
        c.remove("sd").await.unwrap();
        let err = c.remove("sd").await.unwrap_err();
        assert_eq!(err.code(), Some(Code::NOT_FOUND), "{err}");
        c.check().await.unwrap();
    });
}

#[test]
fn a_hundred_containers_in_a_row_leak_nothing() {
    let f = fixture("hundred");
    block_on(async {
        let c = f.agent.client().await;
        // One container first, so lazily created state (the state dir,
        // the spawner thread) is there before counting.
        let run_one = |id: String| {
            let c = c.clone();
            let storage = f.storage.clone();
            async move {
                let spec = support::spec(&["sh", "-c", "echo $$"], false, "b", "");
                c.create_container(&id, &spec, storage).await.unwrap();
                c.start(&id).await.unwrap();
                assert_eq!(read_all(&c, &id, "", false).await, b"1\n");
                assert_eq!(c.wait(&id, "").await.unwrap().status, 0);
                c.remove(&id).await.unwrap();
            }
        };
        run_one("warm".into()).await;
        let before = f.agent.footprint();
        let started = Instant::now();
        for i in 0..100 {
            run_one(format!("c{i}")).await;
        }
        let took = started.elapsed();
        let after = f.agent.footprint();
        assert_eq!(after, before, "(mounts, fds, children, cgroups) grew");
        assert_eq!(after.3, 0, "container cgroups left");
        println!(
            "100 containers created, run, removed: {took:?} ({:?} each); footprint {after:?}",
            took / 100
        );
    });
}
