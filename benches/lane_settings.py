#!/usr/bin/env python3
"""Chooses the nested-KVM lane's L1 settings by measurement: wall time of
one L1 run (boot L1, `corral run` the default Linux kernel with 2 vCPUs to
its ready marker and ACPI power-off, power L1 off) for each combination of
L1 vCPUs, TCG threading and memory, alternating, medians.

This times the test lane itself (QEMU TCG emulating everything below it),
never Corral: nothing here is a performance figure for Corral.

Usage: benches/lane_settings.py [--runs N]
Needs: cargo build (debug corral), the cached kernel, initramfs and kit.
"""
import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = [  # (vCPUs, TCG threading, MiB)
    (2, "multi", 2048),
    (1, "single", 2048),
    (2, "multi", 1024),
    (2, "single", 2048),
]
LIMIT = 300  # seconds; a run past this is reported as such


def last_line(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def one_run(kit, share, script, vcpus, threading, mib):
    cmd = ["qemu-system-x86_64", "-machine", "q35", "-accel", f"tcg,thread={threading}",
           "-cpu", "max", "-smp", str(vcpus), "-m", str(mib), "-nographic", "-nodefaults",
           "-no-user-config", "-no-reboot", "-serial", "stdio",
           "-kernel", os.path.join(kit, "vmlinuz"),
           "-initrd", os.path.join(kit, "initramfs.cpio.gz"),
           "-append", f"console=ttyS0 quiet panic=-1 corral.l1.script={script} "
                      f"corral.l1.share={share}",
           "-virtfs", "local,path=/,mount_tag=hostroot,security_model=passthrough,"
                      "readonly=on,multidevs=remap",
           "-virtfs", f"local,path={share},mount_tag=share,security_model=passthrough,"
                      "multidevs=remap"]
    start = time.monotonic()
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=LIMIT).stdout
    except subprocess.TimeoutExpired:
        return float("inf")
    wall = time.monotonic() - start
    if "corral-l1: status=0" not in out:
        sys.exit(f"L1 run failed ({vcpus} vCPUs, {threading}, {mib} MiB):\n{out}")
    return wall


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    kernel = last_line(["bash", os.path.join(ROOT, "guest-kernel/build.sh")])
    initrd = last_line(["bash", os.path.join(ROOT, "rootfs/build.sh")])
    kit = last_line(["bash", os.path.join(ROOT, "tests/support/nested/build-kit.sh")])
    corral = os.path.join(ROOT, "target/debug/corral")
    if not os.path.exists(corral):
        sys.exit(f"{corral} is missing: run `cargo build` first")
    share = tempfile.mkdtemp(prefix="corral-lane-settings-")
    script = os.path.join(share, "run.sh")
    with open(script, "w") as f:
        f.write(f"{shlex.quote(corral)} run --kernel {shlex.quote(kernel)}/vmlinux "
                f"--initrd {shlex.quote(initrd)} --cpus 2 --memory 256 > {share}/out.log 2>&1\n")
    walls = {s: [] for s in SETTINGS}
    for _ in range(args.runs):
        for s in SETTINGS:
            walls[s].append(one_run(kit, share, script, *s))
            print(f"  {s}: {walls[s][-1]:.1f} s", flush=True)
    print(f"{'L1 vCPUs':>8} {'TCG':>7} {'MiB':>5}  wall per L1 run (s): median [min, max]"
          f" (inf: over {LIMIT} s)")
    for (vcpus, threading, mib), w in walls.items():
        print(f"{vcpus:>8} {threading:>7} {mib:>5}  {statistics.median(w):6.1f} "
              f"[{min(w):.1f}, {max(w):.1f}]")


if __name__ == "__main__":
    main()
