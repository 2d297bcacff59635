#!/usr/bin/env python3
"""Linux boot under Corral and under QEMU microvm (KVM), same kernel, same
initramfs, same command line, one after the other in the same run.

Prints, for each VMM, the kernel's own printk timestamp at `Run /init` (the
part of boot the VMM influences: memory map, CPUs, devices, timers), the
wall time to that line from process start, and on hardware KVM the time to
the initramfs's ready marker and to process exit after power-off.

On PVM hosts (guest ring 0 emulated, ~100x slower; user space unreachable)
the pvm-ci kernel variant and the PVM command-line workarounds are used and
each run is stopped at `Run /init`.

Usage: benches/linux_boot.py [--cpus N] [--memory MiB] [--timeout S]
"""

import argparse
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PVM_WORKAROUNDS = "noxsave clearcpuid=141,150,151,158,288,298,306,308,534"
BASE_CMDLINE = ("console=ttyS0 reboot=k panic=1 pci=off nomodule 8250.nr_uarts=1 "
                "i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd")
RUN_INIT = "Run /init as init process"
READY = "corral-rootfs: ready"


def build(script, *args):
    out = subprocess.run(["bash", os.path.join(ROOT, script), *args], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    return out.strip().splitlines()[-1]


def boot(name, cmd, pvm, timeout):
    """Runs `cmd`, watching its console; returns a dict of figures."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL, text=True, errors="replace")
    fig = {"vmm": name}
    deadline = start + timeout
    for line in proc.stdout:
        now = time.perf_counter() - start
        if RUN_INIT in line:
            m = re.search(r"\[\s*([0-9.]+)\]", line)
            fig["printk_run_init"] = float(m.group(1)) if m else None
            fig["wall_run_init"] = now
            if pvm:
                break
        if READY in line:
            fig["wall_ready"] = now
        if time.perf_counter() > deadline:
            fig["timeout"] = True
            break
    proc.kill() if pvm or fig.get("timeout") else None
    proc.wait()
    if not pvm and "timeout" not in fig:
        fig["wall_exit"] = time.perf_counter() - start
    return fig


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, default=1)
    ap.add_argument("--memory", type=int, default=128)
    ap.add_argument("--timeout", type=float, default=900)
    args = ap.parse_args()
    pvm = os.path.exists("/sys/module/kvm_pvm")
    kernel = os.path.join(build("guest-kernel/build.sh", "--variant",
                                "pvm-ci" if pvm else "default"), "vmlinux")
    initrd = build("rootfs/build.sh")
    corral = os.path.join(ROOT, "target/release/corral")
    if not os.path.exists(corral):
        sys.exit(f"{corral} is missing: run `cargo build --release` first")
    cmdline = BASE_CMDLINE + (" " + PVM_WORKAROUNDS if pvm else "")
    runs = [
        ("corral", [corral, "run", "--kernel", kernel, "--initrd", initrd,
                    "--cpus", str(args.cpus), "--memory", str(args.memory),
                    "--cmdline", cmdline]),
        ("qemu-kvm", ["qemu-system-x86_64",
                      "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off",
                      "-accel", "kvm", "-cpu", "host,-arch-capabilities",
                      "-m", str(args.memory), "-smp", str(args.cpus),
                      "-nodefaults", "-no-user-config", "-nographic",
                      "-serial", "stdio", "-no-reboot",
                      "-kernel", kernel, "-initrd", initrd,
                      "-append", cmdline]),
    ]
    print(f"kernel {kernel}\ninitrd {initrd}\nKVM: {'PVM' if pvm else 'hardware'}, "
          f"{args.cpus} vCPU(s), {args.memory} MiB")
    results = [boot(name, cmd, pvm, args.timeout) for name, cmd in runs]
    print(f"{'VMM':10} {'printk at Run /init (s)':>24} {'wall to Run /init (s)':>22}"
          f" {'wall to ready (s)':>18} {'wall to exit (s)':>17}")
    for r in results:
        def f(key):
            v = r.get(key)
            return f"{v:.3f}" if isinstance(v, float) else ("timeout" if r.get("timeout") else "-")
        print(f"{r['vmm']:10} {f('printk_run_init'):>24} {f('wall_run_init'):>22}"
              f" {f('wall_ready'):>18} {f('wall_exit'):>17}")
    c, q = results
    if c.get("printk_run_init") and q.get("printk_run_init"):
        print(f"ratio corral/qemu, printk at Run /init: {c['printk_run_init'] / q['printk_run_init']:.3f}")


if __name__ == "__main__":
    main()
