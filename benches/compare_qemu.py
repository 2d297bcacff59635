#!/usr/bin/env python3
"""Process-level boot comparison: `corral run`, with and without cgroup
placement, against QEMU microvm and (given its path) Cloud Hypervisor.

Every VMM boots the same guest: the PVH stub of benches/pvh_stub.py (prints
a banner on COM1, then powers off the way each VMM understands), 1 vCPU,
128 MiB. Runs alternate between the VMMs so that machine noise hits all
alike. For each run it records, from just before the process is spawned:
  - first byte: the first byte of the banner on stdout;
  - exit: the process has exited after the guest powered off.
It prints min/median/max of both, the median peak RSS of each VMM from
separate untimed runs under GNU time (a child forked from Python would
report Python's own RSS), and the ratios the performance issue sets
targets for. With --throughput S it also runs each VMM back to back in
two parallel streams (2 cores here) for S seconds and prints VMs/s.

`corral+cg` is `corral run --cgroup-parent /corral-bench` (split
placement: the vCPU thread in the sandbox's cgroup, every other thread in
its unconstrained sibling, in every mounted hierarchy); the difference to
`corral` is what placement costs. Needs root for that row. The parent is
made once, before the runs, in every hierarchy, as a host's kubepods or
systemd slice exists before any pod: a run that has to make it (and, on
cgroup v1, the host's first cpuset cgroup besides the root, which flips a
kernel static key with IPIs to every CPU) pays that too.

With --edge PATH it adds `edge` and `edge+cg`: the static edge build
(scripts/build-edge), which is the `corral` users install; `corral` is
the dynamically linked development build (target/release).

With --test-guest, Corral and QEMU boot Corral's own test guest instead
(workload=boot: ring 3, boot timer, MMIO power-off); Cloud Hypervisor
cannot end that guest, so it is left out.

Usage: benches/compare_qemu.py [--runs N] [--ch PATH] [--throughput S]
       [--corral PATH] [--edge PATH] [--seccomp-off] [--no-placement]
       [--test-guest]
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pvh_stub  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_GUEST = os.path.join(ROOT, "test-guest/target/release/corral-test-guest")
TEST_BANNER = b"corral-test-guest: booting"
CGROUP_PARENT = "/corral-bench"


def corral_cmd(corral, guest, test_guest):
    cmd = [corral, "run", "--kernel", guest, "--cpus", "1", "--memory", "128"]
    return cmd + (["--cmdline", "workload=boot"] if test_guest else [])


def qemu_cmd(guest, test_guest):
    # QEMU microvm has no i8042 and its COM1 is port I/O, which ring 3
    # cannot use: the test guest powers off through the microvm generic
    # event device's ACPI sleep register (MMIO 0xfea00200).
    cmd = ["qemu-system-x86_64",
           "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off",
           "-accel", "kvm", "-cpu", "host,-arch-capabilities",
           "-m", "128", "-smp", "1", "-nodefaults", "-no-user-config",
           "-nographic", "-serial", "stdio", "-no-reboot", "-kernel", guest]
    if test_guest:
        cmd += ["-append", "workload=boot uart=none boot_timer=none poweroff=0xfea00200"]
    return cmd


def ch_cmd(ch, guest):
    return [ch, "--kernel", guest, "--cpus", "boot=1", "--memory", "size=128M",
            "--serial", "tty", "--console", "off"]


def measure(cmd, banner):
    """Returns (ms to first stdout byte, ms to exit)."""
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
    if proc.returncode != 0 or banner not in out:
        sys.exit(f"run failed ({proc.returncode}): {cmd}\nstdout: {out!r}\nstderr: {err!r}")
    return (t_first - start) * 1000, (t_exit - start) * 1000


def peak_rss_kib(cmd, runs=5):
    """Median peak RSS of `cmd` as GNU time reports it."""
    values = []
    for _ in range(runs):
        res = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, check=True)
        values.append(int(res.stderr.split()[-1]))
    return statistics.median(values)


def throughput(cmd, seconds, streams=2):
    """VMs per second, `streams` back-to-back loops in parallel."""
    done = [0] * streams
    stop = time.perf_counter() + seconds

    def loop(i):
        while time.perf_counter() < stop:
            rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                stdin=subprocess.DEVNULL).returncode
            if rc != 0:
                sys.exit(f"run failed ({rc}) under load: {cmd}")
            done[i] += 1
    start = time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(done) / (time.perf_counter() - start)


def make_parent(name):
    """Makes /<name> in every writable cgroup hierarchy; returns those made."""
    made = []
    for mount in sorted(os.listdir("/sys/fs/cgroup")):
        path = os.path.join("/sys/fs/cgroup", mount, name.strip("/"))
        if os.path.islink(os.path.join("/sys/fs/cgroup", mount)) or os.path.exists(path):
            continue
        try:
            os.mkdir(path)
            made.append(path)
        except OSError:
            pass  # a read-only or unused hierarchy
    return made


def spread(values):
    return min(values), statistics.median(values), max(values)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=21)
    ap.add_argument("--corral", default=os.path.join(ROOT, "target/release/corral"))
    ap.add_argument("--ch", help="a cloud-hypervisor binary to compare with")
    ap.add_argument("--edge", help="also run this static edge build of corral (the `corral` "
                    "users install), with and without placement")
    ap.add_argument("--seccomp-off", action="store_true",
                    help="also run corral with --seccomp off (the filters' cost)")
    ap.add_argument("--no-placement", action="store_true",
                    help="leave out the corral+cg row (it needs root)")
    ap.add_argument("--test-guest", action="store_true",
                    help="boot Corral's test guest (Corral and QEMU only)")
    ap.add_argument("--throughput", type=float, metavar="S",
                    help="also measure VMs/s over S seconds per VMM, two streams")
    args = ap.parse_args()
    for path in [args.corral] + [p for p in (args.edge, args.ch) if p]:
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: run `cargo build --release` (or check the path)")
    if not shutil.which("qemu-system-x86_64"):
        sys.exit("qemu-system-x86_64 is missing: run `bash .ci/setup` (it installs qemu-system-x86)")
    if not args.no_placement and os.geteuid() != 0:
        sys.exit("the corral+cg row moves threads between cgroups: run as root, "
                 "or pass --no-placement")
    tmp = tempfile.mkdtemp(prefix="corral-compare-")
    if args.test_guest:
        if not os.path.exists(TEST_GUEST):
            sys.exit(f"{TEST_GUEST} is missing: run `bash test-guest/build`")
        guest, banner = TEST_GUEST, TEST_BANNER
    else:
        guest, banner = pvh_stub.write(os.path.join(tmp, "stub.elf")), pvh_stub.BANNER

    tg = args.test_guest
    vmms = {"corral": corral_cmd(args.corral, guest, tg)}
    made_parents = []
    if not args.no_placement:
        made_parents = make_parent(CGROUP_PARENT)
        vmms["corral+cg"] = vmms["corral"] + ["--cgroup-parent", CGROUP_PARENT]
    vmms["qemu"] = qemu_cmd(guest, tg)
    if args.ch and not tg:
        vmms["ch"] = ch_cmd(args.ch, guest)
    if args.edge:
        vmms["edge"] = corral_cmd(args.edge, guest, tg)
        if not args.no_placement:
            vmms["edge+cg"] = vmms["edge"] + ["--cgroup-parent", CGROUP_PARENT]
    if args.seccomp_off:
        vmms["no-seccomp"] = vmms["corral"] + ["--seccomp", "off"]
    results = {name: [] for name in vmms}
    for cmd in vmms.values():  # warm the page cache, untimed
        measure(cmd, banner)
    for _ in range(args.runs):
        for name, cmd in vmms.items():
            results[name].append(measure(cmd, banner))

    rss = {name: (peak_rss_kib(cmd) / 1024 if os.path.exists("/usr/bin/time") else float("nan"))
           for name, cmd in vmms.items()}
    rate = {}
    if args.throughput:
        for rnd in range(2):  # two alternating rounds; the better one counts
            for name, cmd in vmms.items():
                rate[name] = max(rate.get(name, 0.0), throughput(cmd, args.throughput / 2))

    guest_name = "Corral's test guest (workload=boot)" if tg else "the PVH stub"
    print(f"{args.runs} alternating runs each, {guest_name}, 1 vCPU, 128 MiB; ms: min / median / max")
    print(f"{'':11} {'first byte':>22} {'exit':>24} {'RSS MiB':>8}" +
          (f" {'VMs/s':>7}" if rate else ""))
    med = {}
    for name, runs in results.items():
        f, e = spread([r[0] for r in runs]), spread([r[1] for r in runs])
        med[name] = (f[1], e[1])
        line = (f"{name:11} {f[0]:6.2f} {f[1]:6.2f} {f[2]:7.2f}   "
                f"{e[0]:6.2f} {e[1]:6.2f} {e[2]:7.2f}   {rss[name]:7.1f}")
        print(line + (f" {rate[name]:7.1f}" if rate else ""))

    def ratio(a, b, label):
        line = (f"{label:34} first byte {med[a][0] / med[b][0]:.3f}, exit {med[a][1] / med[b][1]:.3f}, "
                f"RSS {rss[a] / rss[b]:.3f}")
        print(line + (f", VMs/s {rate[a] / rate[b]:.3f}" if rate else ""))
    def placement_cost(base, label):
        placed = base + "+cg"
        if placed in med:
            print(f"{label:34} first byte {med[placed][0] - med[base][0]:+.2f} ms, "
                  f"exit {med[placed][1] - med[base][1]:+.2f} ms")
    placement_cost("corral", "placement costs (medians)")
    ratio("corral", "qemu", "corral / qemu")
    if "ch" in med:
        ratio("corral", "ch", "corral / cloud-hypervisor")
        if "corral+cg" in med:
            ratio("corral+cg", "ch", "corral+cg / cloud-hypervisor")
    if "edge" in med:
        ratio("edge", "corral", "static edge build / dynamic build")
        if "ch" in med:
            ratio("edge", "ch", "edge / cloud-hypervisor")
            if "edge+cg" in med:
                ratio("edge+cg", "ch", "edge+cg / cloud-hypervisor")
        placement_cost("edge", "placement costs, edge (medians)")
    if "no-seccomp" in med:
        ratio("corral", "no-seccomp", "seccomp filters on / off")
    shutil.rmtree(tmp, ignore_errors=True)
    for path in made_parents:
        # Concurrent runs (the throughput streams) can leave an empty
        # corral_overhead beneath it: no run removes what another made.
        for sub in (os.path.join(path, "corral_overhead"), path):
            try:
                if os.path.isdir(sub):
                    os.rmdir(sub)
            except OSError as e:
                print(f"cannot remove {sub}: {e}", file=sys.stderr)


if __name__ == "__main__":
    main()
