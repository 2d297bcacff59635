//! The pod lifecycle (`corral_runtime::pod`) on this machine's /dev/kvm,
//! with the test guest (which has no agent): a pod whose guest never
//! answers fails to reach its agent with a clear error within the deadline,
//! and still ends and tears down cleanly. The agent path itself is
//! `tests/agent_vm.rs` (Linux user space, nested lane).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use corral_runtime::pod::{Pod, PodConfig, PodError};
use corral_vmm::{VmExit, VsockConfig};

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

#[test]
fn a_pod_whose_guest_has_no_agent_fails_to_reach_it_clearly() {
    let _kvm = common::kvm();
    let dir = common::scratch_dir("pod-noagent");
    let socket = dir.join("v.sock");
    let _ = std::fs::remove_file(&socket);
    let (mut vm, _console) = common::guest_config(1, "workload=hang");
    vm.vsock = Some(VsockConfig {
        cid: 3,
        uds_path: socket.clone(),
    });
    let mut pod = Pod::create(PodConfig { vm, cgroup: None }).unwrap();
    pod.start();
    let started = Instant::now();
    let err = match block_on(pod.agent(Duration::from_secs(2))) {
        Ok(_) => panic!("the test guest has no agent, yet one answered"),
        Err(e) => e,
    };
    let waited = started.elapsed();
    let text = err.to_string();
    assert!(matches!(err, PodError::Agent(_)), "{text}");
    assert!(
        text.contains("did not answer on vsock port 1024")
            && text.contains(&socket.display().to_string()),
        "{text}"
    );
    assert!(!text.contains('\n'), "{text}");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    pod.shutdown_handle().request();
    assert_eq!(pod.wait(), VmExit::HostShutdown);
    pod.teardown().unwrap();
}

#[test]
fn a_pod_without_vsock_says_the_agent_cannot_be_reached() {
    let _kvm = common::kvm();
    let (vm, _console) = common::guest_config(1, "workload=hang");
    let mut pod = Pod::create(PodConfig { vm, cgroup: None }).unwrap();
    pod.start();
    let err = block_on(pod.agent(Duration::from_secs(1))).err().unwrap();
    assert!(matches!(err, PodError::NoVsock), "{err}");
    assert!(err.to_string().contains("no vsock device"), "{err}");
    pod.shutdown_handle().request();
    assert_eq!(pod.wait(), VmExit::HostShutdown);
    pod.teardown().unwrap();
}
