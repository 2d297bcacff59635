#!/usr/bin/env python3
"""Process-level boot comparison: `corral run` vs QEMU microvm (KVM).

Both boot the same test guest (1 vCPU, 128 MiB, workload=boot: print the
banner in ring 0, go to ring 3, signal the boot timer, power off through an
ACPI sleep register by MMIO). Runs alternate between the two VMMs so that
machine noise hits both alike. For each run it records, from just before
the process is spawned:
  - first byte: the first byte of the guest's serial banner on stdout;
  - exit: the process has exited after the guest powered off;
It prints medians and the Corral/QEMU ratios, and the peak RSS of each VMM
from separate, untimed runs under GNU time (a child forked from Python would
report Python's own RSS as its peak).

With --edge PATH (scripts/build-edge's static binary, its guest inside but
given the test guest here) it is run in the same alternation as a third
VMM, to compare the static build with the dynamic one.

Usage: benches/compare_qemu.py [--runs N] [--corral PATH] [--guest PATH] [--edge PATH]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BANNER = b"corral-test-guest: booting"


def corral_cmd(corral, guest):
    return [corral, "run", "--kernel", guest, "--cpus", "1", "--memory", "128",
            "--cmdline", "workload=boot"]


def qemu_cmd(guest):
    # QEMU microvm has no i8042 (a reset through it hangs) and its COM1 is
    # port I/O, which ring 3 cannot use: the guest powers off through the
    # microvm generic event device's ACPI sleep register (MMIO 0xfea00200).
    return ["qemu-system-x86_64",
            "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off",
            "-accel", "kvm", "-cpu", "host,-arch-capabilities",
            "-m", "128", "-smp", "1", "-nodefaults", "-no-user-config",
            "-nographic", "-serial", "stdio", "-no-reboot",
            "-kernel", guest,
            "-append", "workload=boot uart=none boot_timer=none poweroff=0xfea00200"]


def measure(cmd):
    """Returns (ms to first stdout byte, ms to exit, output)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)
    first = proc.stdout.read(1)
    t_first = time.perf_counter()
    rest = proc.stdout.read()
    proc.wait()
    t_exit = time.perf_counter()
    err = proc.stderr.read()
    out = first + rest
    if proc.returncode != 0 or BANNER not in out:
        sys.exit(f"run failed ({proc.returncode}): {cmd}\nstdout: {out!r}\nstderr: {err!r}")
    return (t_first - start) * 1000, (t_exit - start) * 1000, out


def peak_rss_kib(cmd, runs=5):
    """Median peak RSS of `cmd` as GNU time reports it."""
    values = []
    for _ in range(runs):
        res = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, check=True)
        values.append(int(res.stderr.split()[-1]))
    return statistics.median(values)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--corral", default=os.path.join(ROOT, "target/release/corral"))
    ap.add_argument("--guest", default=os.path.join(
        ROOT, "test-guest/target/release/corral-test-guest"))
    ap.add_argument("--edge", help="also run this static edge build of corral")
    ap.add_argument("--seccomp-off", action="store_true",
                    help="also run corral with --seccomp off (the filters' cost)")
    args = ap.parse_args()
    for path in (args.corral, args.guest) + ((args.edge,) if args.edge else ()):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run `cargo build --release` first")
    if not shutil.which("qemu-system-x86_64"):
        sys.exit("qemu-system-x86_64 is missing: run `bash .ci/setup` (it installs qemu-system-x86)")

    vmms = {"corral": corral_cmd(args.corral, args.guest), "qemu": qemu_cmd(args.guest)}
    if args.edge:
        vmms["edge"] = corral_cmd(args.edge, args.guest)
    if args.seccomp_off:
        vmms["no-seccomp"] = corral_cmd(args.corral, args.guest) + ["--seccomp", "off"]
    results = {name: [] for name in vmms}
    for name, cmd in vmms.items():  # warm the page cache, untimed
        measure(cmd)
    for _ in range(args.runs):
        for name, cmd in vmms.items():
            results[name].append(measure(cmd)[:2])

    med = {name: [statistics.median(r[i] for r in runs) for i in range(2)]
           for name, runs in results.items()}
    if os.path.exists("/usr/bin/time"):
        for name, cmd in vmms.items():
            med[name].append(peak_rss_kib(cmd))
    else:
        for name in vmms:
            med[name].append(float("nan"))
    print(f"{args.runs} alternating runs each, medians "
          f"(test guest, 1 vCPU, 128 MiB, workload=boot)")
    print(f"{'':10} {'first byte (ms)':>16} {'exit (ms)':>10} {'peak RSS (MiB)':>15}")
    for name, (first, exit_, rss) in med.items():
        print(f"{name:10} {first:16.2f} {exit_:10.2f} {rss / 1024:15.1f}")
    c, q = med["corral"], med["qemu"]
    print(f"{'ratio':10} {c[0] / q[0]:16.3f} {c[1] / q[1]:10.3f} {c[2] / q[2]:15.3f}"
          "   (corral / qemu)")
    if args.edge:
        e = med["edge"]
        print(f"{'edge/corr':10} {e[0] / c[0]:16.3f} {e[1] / c[1]:10.3f} {e[2] / c[2]:15.3f}"
              "   (static edge build / dynamic build)")
    if args.seccomp_off:
        o = med["no-seccomp"]
        print(f"{'on/off':10} {c[0] / o[0]:16.3f} {c[1] / o[1]:10.3f} {c[2] / o[2]:15.3f}"
              "   (seccomp filters on / off)")
    lo = {name: min(r[0] for r in runs) for name, runs in results.items()}
    print("first byte, fastest run: " + ", ".join(f"{n} {v:.2f} ms" for n, v in lo.items()))


if __name__ == "__main__":
    main()
