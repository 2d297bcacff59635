#!/usr/bin/env python3
"""Why Corral splits the VM's threads across cgroups: the proof benchmark.

The test guest runs on 2 vCPUs: vCPU 1 spins in ring 3, vCPU 0 drives
virtio-blk at queue depth 1 (so each request's time is its latency). The
sandbox cgroup gets a tight CPU quota. Runs alternate between
  - split:        vCPU threads in the quota'd cgroup, the VMM's device worker
                  (vmm-blk0) and other threads in the unconstrained sibling;
  - sandbox-only: the whole process in the quota'd cgroup (what Kata's Rust
                  runtime and every cgroup-v2 runtime do).
Reported per mode (medians): I/O throughput and per-request latency of each
pass, CPU time of the vCPU cgroup vs the overhead cgroup, and the placement
latency of each vCPU (thread spawned → placed in its cgroup, and the move
itself).

Usage: benches/cgroup_proof.py [--runs N] [--quota CPUS] [--mib M]   (root)
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORRAL = os.path.join(ROOT, "target/release/corral")
GUEST = os.path.join(ROOT, "test-guest/target/release/corral-test-guest")
DISK = "/tmp/corral-cgroup-proof.img"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def run(mode, args):
    cmd = [CORRAL, "--log", "info", "run", "--kernel", GUEST, "--cpus", "2",
           "--disk", DISK, "--cgroup-parent", "", "--cgroup-mode", mode,
           "--cpus-quota", str(args.quota),
           "--cmdline", f"workload=blkbench bench_mib={args.mib} depth=1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    starts, passes = {}, {}
    for line in proc.stdout:
        t = time.perf_counter()
        m = re.match(r"bench blk (\S+ \S+) (start|done)(?: (\d+) ops (\d+) bytes)?", line.strip())
        if m and m.group(2) == "start":
            starts[m.group(1)] = t
        elif m:
            secs = t - starts[m.group(1)]
            ops, nbytes = int(m.group(3)), int(m.group(4))
            passes[m.group(1)] = (nbytes / secs / 1e6, secs / ops * 1e6)
    err = ANSI.sub("", proc.stderr.read())
    if proc.wait() != 0:
        sys.exit(f"corral failed ({mode}):\n{err}")
    stats = re.search(r"cpu: vCPU threads (\d+) ms, every other thread (\d+) ms", err)
    # A vCPU thread spawned into its cgroup needed no move (0 µs); the
    # check after spawning is what the first figure then shows.
    spawn = [int(x) for x in re.findall(
        r"(?:placed|was spawned into its cgroups; checked) (\d+) µs after", err)]
    move = [int(x) for x in re.findall(r"the move itself took (\d+) µs", err)]
    move += [0] * len(re.findall(r"was spawned into its cgroups", err))
    return passes, (int(stats.group(1)) * 1000, int(stats.group(2)) * 1000), spawn, move


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quota", type=float, default=0.5)
    ap.add_argument("--mib", type=int, default=8)
    args = ap.parse_args()
    for path in (CORRAL, GUEST):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: cargo build --release")
    with open(DISK, "wb") as f:
        f.truncate(256 << 20)
    results = {m: [] for m in ("split", "sandbox-only")}
    for _ in range(args.runs):
        for mode in results:
            results[mode].append(run(mode, args))
    print(f"2 vCPUs (one spinning, one doing virtio-blk I/O at depth 1), quota {args.quota} CPU, "
          f"{args.mib} MiB per pass, medians of {args.runs} runs")
    names = list(results["split"][0][0])
    print(f"{'pass':16} {'split MB/s':>11} {'lat µs':>9} {'sandbox-only MB/s':>18} {'lat µs':>9} {'MB/s ratio':>11}")
    for n in names:
        row = []
        for mode in results:
            row.append(statistics.median(r[0][n][0] for r in results[mode]))
            row.append(statistics.median(r[0][n][1] for r in results[mode]))
        print(f"{n:16} {row[0]:11.2f} {row[1]:9.0f} {row[2]:18.2f} {row[3]:9.0f} {row[0] / row[2]:11.2f}")
    for mode, runs in results.items():
        vcpu = statistics.median(r[1][0] for r in runs) / 1e3
        over = statistics.median(r[1][1] for r in runs) / 1e3
        spawn = sorted(x for r in runs for x in r[2])
        move = sorted(x for r in runs for x in r[3])
        print(f"{mode:13} CPU: vCPU cgroup {vcpu:.0f} ms, overhead cgroup {over:.0f} ms; "
              f"placement: spawn→placed median {statistics.median(spawn)} µs "
              f"(min {spawn[0]}, max {spawn[-1]}), move median {statistics.median(move)} µs "
              f"(min {move[0]}, max {move[-1]})")


if __name__ == "__main__":
    main()
