//! Nothing leaks after a crash: `corral run` on the real `/dev/kvm` and the
//! real cgroup v1 files, one row per way a run can end (normal exit, guest
//! crash, failed starts, `kill -9` at boot / while running / during
//! teardown, a second Ctrl-C while the VM will not stop or during
//! teardown), each with `--cgroup-parent` (split placement), a vsock
//! socket, a tap Corral creates and one the user made. After each row, and
//! for `kill -9` rows after the next start (which sweeps), there must be 0
//! cgroups beneath the parent and 0 `corral-<pid>` cgroups anywhere, 0
//! sockets, 0 new mounts, 0 taps, and the user's tap as it was. The table
//! is printed for the closing note.
//!
//! Runs stay inside a network namespace of their own (the taps) and a
//! parent cgroup this test makes beneath its own, as an administrator
//! would make `/corral.slice`. The sweep of a killed run's cgroups is
//! checked again on a pure cgroup v2 host (threaded `vcpu`/`overhead`
//! children) in the nested lane's L1 ([`lane_pure_cgroup_v2_sweep`]).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "support/nested/mod.rs"]
mod nested;
#[path = "support/leaks_world.rs"]
mod world;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use world::{subdirs, Action, Frozen, Left, Mode, Row, World};

#[rustfmt::skip]
const ROWS: [Row; 9] = [
    row("normal exit (guest powers off)", Mode::Boot, "workload=spin", Action::None, Some(0)),
    row("guest crash (triple fault)", Mode::Boot, "r0=triplefault", Action::None, Some(4)),
    Row { bad_kernel: true, ..row("failed start: bad kernel", Mode::Container, "", Action::None, Some(1)) },
    row("failed start: agent never answers", Mode::Container, "workload=spin", Action::None, Some(1)),
    row("kill -9 at boot", Mode::Container, "workload=hang", Action::KillAtBoot, None),
    row("kill -9 while running", Mode::Container, "workload=hang", Action::KillRunning, None),
    row("kill -9 during teardown", Mode::Container, "workload=hang", Action::KillInTeardown, None),
    row("2nd Ctrl-C, VM will not stop", Mode::Container, "workload=hang", Action::SecondIntStuck, Some(130)),
    row("2nd Ctrl-C during teardown", Mode::Container, "workload=hang", Action::SecondIntInTeardown, Some(130)),
];

const fn row(
    name: &'static str,
    mode: Mode,
    cmdline: &'static str,
    action: Action,
    exit: Option<i32>,
) -> Row {
    Row {
        name,
        mode,
        cmdline,
        bad_kernel: false,
        action,
        exit,
    }
}

/// The cgroup sweep's duration a run logged.
fn sweep_us(log: &str) -> Option<u64> {
    log.lines()
        .find_map(|l| l.split("stale cgroup sweep took ").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// One row's outcome.
struct Outcome {
    exit: String,
    after_row: Left,
    after_next: Option<Left>,
    /// The sweep's duration at the row's start and at the next start.
    sweep_us: (Option<u64>, Option<u64>),
    note: String,
    /// The cgroups left at the end, if any.
    cgroups: Vec<PathBuf>,
}

fn run_row(world: &mut World, row: &Row, index: usize) -> Outcome {
    let mut note = String::new();
    for attempt in 1..=5 {
        let mut corral = world.spawn(row, &format!("{index}-{attempt}"));
        let mut evidence = true;
        let mut freeze = None;
        match row.action {
            Action::None => {}
            Action::KillAtBoot => {
                corral.wait_line("VM created and placed", Duration::from_secs(60));
                corral.signal(libc::SIGKILL);
            }
            Action::KillRunning => {
                corral.wait_spinning();
                corral.signal(libc::SIGKILL);
            }
            Action::KillInTeardown | Action::SecondIntInTeardown => {
                corral.wait_spinning();
                let first = match row.action {
                    Action::KillInTeardown => libc::SIGTERM,
                    _ => libc::SIGINT,
                };
                corral.signal(first);
                corral.wait_line("VM ended", Duration::from_secs(30));
                corral.signal(libc::SIGSTOP);
                corral.wait_stopped();
                // The stop landed before teardown removed the cgroups.
                evidence = world.left().0 > 0;
                if row.action == Action::KillInTeardown {
                    corral.signal(libc::SIGKILL);
                } else {
                    corral.signal(libc::SIGINT);
                    corral.signal(libc::SIGCONT);
                }
            }
            Action::SecondIntStuck => {
                corral.wait_spinning();
                let freezer = world
                    .parent_dirs()
                    .into_iter()
                    .find(|d| d.starts_with("/sys/fs/cgroup/freezer"))
                    .unwrap();
                freeze = Some(Frozen::new(
                    freezer.join(format!("corral-{}", corral.pid())),
                ));
                corral.signal(libc::SIGINT);
                std::thread::sleep(Duration::from_secs(1));
                assert!(
                    corral.child.try_wait().unwrap().is_none(),
                    "corral stopped although its vCPUs are frozen: {}",
                    corral.stderr()
                );
                corral.signal(libc::SIGINT);
            }
        }
        let (code, killed) = corral.finish(Duration::from_secs(60));
        drop(freeze);
        let stderr = corral.stderr();
        let exit = match (code, killed) {
            (_, true) => "SIGKILL".to_string(),
            (Some(c), false) => c.to_string(),
            (None, false) => "signal".to_string(),
        };
        assert_eq!(
            (code, killed),
            (row.exit, row.exit.is_none()),
            "{}: unexpected end:\n{stderr}",
            row.name
        );
        if matches!(
            row.action,
            Action::SecondIntStuck | Action::SecondIntInTeardown
        ) {
            let again = stderr.contains("again: exiting without waiting");
            if row.action == Action::SecondIntStuck {
                assert!(
                    again,
                    "{}: the second signal was not handled:\n{stderr}",
                    row.name
                );
            }
            note = format!(
                "second signal {}",
                if again {
                    "ended it"
                } else {
                    "came after teardown"
                }
            );
        }
        let (after_row, cgroups) = world.left_with_cgroups();
        let row_sweep = sweep_us(&stderr);
        if !evidence {
            eprintln!(
                "  {}: the stop came after the cgroups were gone; again",
                row.name
            );
            continue;
        }
        if attempt > 1 {
            note = format!("{note} (attempt {attempt})");
        }
        let killed_rows = row.exit.is_none();
        if !killed_rows {
            return Outcome {
                exit,
                after_row,
                after_next: None,
                sweep_us: (row_sweep, None),
                note,
                cgroups,
            };
        }
        assert!(
            after_row.0 > 0 && after_row.1 > 0,
            "{}: a kill -9 left nothing to sweep ({after_row}): not the case tested",
            row.name
        );
        // The next start sweeps (and ends: the test guest has no agent).
        let next = Row {
            cmdline: "workload=spin",
            action: Action::None,
            ..ROWS[3]
        };
        let mut again = world.spawn(&next, &format!("{index}-next"));
        let (code, _) = again.finish(Duration::from_secs(60));
        let log = again.stderr();
        assert_eq!(code, Some(1), "the next start:\n{log}");
        assert!(
            log.contains("removed") && log.contains("stale cgroups"),
            "the next start swept nothing:\n{log}"
        );
        let (after_next, cgroups) = world.left_with_cgroups();
        return Outcome {
            exit,
            after_row,
            after_next: Some(after_next),
            sweep_us: (row_sweep, sweep_us(&log)),
            note,
            cgroups,
        };
    }
    panic!(
        "{}: the stop never landed before teardown's cgroup removal",
        row.name
    );
}

#[test]
fn nothing_leaks_however_a_run_ends() {
    let _kvm = common::kvm();
    let mut world = World::new();
    assert_eq!(
        world.left(),
        Left::default(),
        "leftovers before the first row"
    );
    let mut table = Vec::new();
    for (i, row) in ROWS.iter().enumerate() {
        let outcome = run_row(&mut world, row, i);
        let intact = world.user_tap_intact();
        eprintln!(
            "{}: exit {}, left {} / after the next start {:?}",
            row.name, outcome.exit, outcome.after_row, outcome.after_next
        );
        table.push((row.name, outcome, intact));
    }
    eprintln!(
        "\nKVM: {}; cgroup v1, split placement beneath {}",
        common::kvm_flavour(),
        world.parent_name
    );
    eprintln!(
        "| {:<34} | {:>7} | left after the row | after the next start | sweep µs (row / next) | user tap | note |",
        "row", "exit"
    );
    eprintln!(
        "| {:<34} | {:>7} | cg sock mnt tap    | cg sock mnt tap      | | | |",
        "", ""
    );
    let us = |v: Option<u64>| v.map_or("-".to_string(), |us| us.to_string());
    for (name, o, intact) in &table {
        let next = o.after_next.map_or("-".to_string(), |l| l.to_string());
        let tap = if *intact { "as it was" } else { "CHANGED" };
        eprintln!(
            "| {name:<34} | {:>7} | {:<18} | {next:<20} | {:>21} | {tap:<8} | {} |",
            o.exit,
            o.after_row.to_string(),
            format!("{} / {}", us(o.sweep_us.0), us(o.sweep_us.1)),
            o.note
        );
    }
    for (name, o, intact) in &table {
        let last = o.after_next.unwrap_or(o.after_row);
        assert_eq!(
            last,
            Left::default(),
            "{name}: leftovers (cgroups, sockets, mounts, taps); cgroups {:?}",
            o.cgroups
        );
        assert!(intact, "{name}: the user's tap was changed");
    }
    // The parent (made by this test) must be empty: its teardown says so.
    world.parent.teardown().unwrap();
}

// ------------------------------------------------------- pure cgroup v2 (L1)

/// Runs the `pure_v2_` test of this file inside the nested lane's L1, a
/// pure cgroup v2 host with a real `/dev/kvm`.
#[test]
fn lane_pure_cgroup_v2_sweep() {
    let _kvm = common::kvm();
    nested::run_own_tests_in_l1(
        "lane_pure_cgroup_v2_sweep",
        &["pure_v2_"],
        Duration::from_secs(600),
    );
}

/// The cgroup2 path of process `pid` (`/proc/<pid>/cgroup`'s `0::` line).
fn v2_cgroup_of(pid: u32) -> String {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_else(|| panic!("no cgroup2 line in /proc/{pid}/cgroup: {text}"))
        .to_string()
}

#[test]
#[ignore = "needs a pure cgroup v2 host: lane_pure_cgroup_v2_sweep runs it in the nested lane's L1"]
fn pure_v2_a_killed_runs_cgroups_go_at_the_next_start() {
    assert!(
        nested::in_l1(),
        "this test needs a pure cgroup v2 host: run it through lane_pure_cgroup_v2_sweep"
    );
    let _kvm = common::kvm();
    let parent_name = format!("corral-leaks-{}", std::process::id());
    let origin =
        Path::new("/sys/fs/cgroup").join(v2_cgroup_of(std::process::id()).trim_start_matches('/'));
    let parent = origin.join(&parent_name);
    let guest = common::test_guest();
    let spawn = |cmdline: &str| {
        Command::new(env!("CARGO_BIN_EXE_corral"))
            .args(["run", "--cpus", "2", "--cmdline", cmdline, "--kernel"])
            .arg(&guest)
            .args(["--cgroup-parent", &parent_name])
            .args(["--log", "warn,corral_runtime::cgroup=debug"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut killed = spawn("workload=hang");
    let pid = killed.id();
    // Split on v2: once placed, the main thread is in the domain's
    // threaded `overhead` child.
    let deadline = Instant::now() + Duration::from_secs(120);
    while !v2_cgroup_of(pid).ends_with("/overhead") {
        assert!(
            Instant::now() < deadline,
            "corral was not placed within 120 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    killed.kill().unwrap();
    killed.wait().unwrap();
    let mut left = Vec::new();
    subdirs(&parent, 0, &mut left);
    let domain = parent.join(format!("corral-{pid}"));
    for d in [domain.clone(), domain.join("vcpu"), domain.join("overhead")] {
        assert!(
            left.contains(&d),
            "{} not left by the kill: {left:?}",
            d.display()
        );
    }
    let next = spawn("workload=spin").wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&next.stderr);
    assert_eq!(next.status.code(), Some(0), "{log}");
    let mut after = Vec::new();
    subdirs(&parent, 0, &mut after);
    eprintln!(
        "pure v2: kill -9 left {} cgroups beneath {}; after the next start {}; sweep: {}",
        left.len(),
        parent.display(),
        after.len(),
        log.lines()
            .find(|l| l.contains("stale cgroup sweep took"))
            .unwrap_or("-")
    );
    assert!(
        after.is_empty(),
        "left after the next start: {after:?}\n{log}"
    );
    assert!(log.contains("removed 3 stale cgroups"), "{log}");
    // The parent stays (the killed run made it, the next did not): a
    // `--cgroup-parent` is the caller's to remove.
    std::fs::remove_dir(&parent).unwrap();
}
