#!/usr/bin/env python3
"""Shim start → listening: how long containerd waits in `shim start`.

containerd runs `<shim> start` in the bundle and reads the address it
prints; the shim must be listening by then. This times that call for
Corral's shim and, as the peer in the same run, Debian's
containerd-shim-runc-v2, alternating, against a private containerd (the
serving shim connects to its ttrpc socket for events). Each started shim is
then stopped (SIGKILL) and its socket removed. Also reports each idle
shim's RSS (no task: the process before any VM).

Usage: benches/shim_start.py [--runs N]   (root; builds the release shim)
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORRAL_SHIM = os.path.join(ROOT, "target/release/containerd-shim-corral-v2")
RUNC_SHIM = shutil.which("containerd-shim-runc-v2") or "/usr/bin/containerd-shim-runc-v2"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def shim_pids(exe):
    pids = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.readlink(f"/proc/{p}/exe") == exe:
                    pids.append(int(p))
            except OSError:
                pass
    return pids


def one(exe, work, cd_sock, n):
    bundle = os.path.join(work, f"b{n}")
    os.makedirs(bundle, exist_ok=True)
    with open(os.path.join(bundle, "config.json"), "w") as f:
        f.write("{}")
    env = dict(os.environ, TTRPC_ADDRESS=cd_sock + ".ttrpc")
    before = set(shim_pids(exe))
    t0 = time.perf_counter()
    out = subprocess.run([exe, "-namespace", "bench", "-id", f"s{n}", "-address", cd_sock,
                          "-publish-binary", "/usr/bin/containerd", "start"],
                         cwd=bundle, env=env, stdin=subprocess.DEVNULL,
                         capture_output=True, text=True)
    dt = (time.perf_counter() - t0) * 1000
    addr = out.stdout.strip()
    if out.returncode != 0 or not addr:
        raise SystemExit(f"{exe} start failed: {out.stderr}")
    started = [p for p in shim_pids(exe) if p not in before]
    rss = [rss_kib(p) for p in started]
    for p in started:
        os.kill(p, signal.SIGKILL)
    path = addr.removeprefix("unix://")
    if os.path.exists(path):
        os.unlink(path)
    return dt, (rss[0] if rss else 0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=15)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "corral-runtime",
                    "--bin", "containerd-shim-corral-v2"], cwd=ROOT, check=True)
    work = tempfile.mkdtemp(prefix="shimb-", dir="/tmp")
    sock = os.path.join(work, "c.sock")
    conf = os.path.join(work, "config.toml")
    with open(conf, "w") as f:
        f.write(f'version = 2\nroot = "{work}/root"\nstate = "{work}/state"\n'
                'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n'
                f'[grpc]\n  address = "{sock}"\n[ttrpc]\n  address = "{sock}.ttrpc"\n')
    cd = subprocess.Popen(["containerd", "--config", conf], stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            if os.path.exists(sock + ".ttrpc"):
                break
            time.sleep(0.05)
        res = {"corral": [], "runc": []}
        rss = {"corral": [], "runc": []}
        for i in range(args.runs):
            for name, exe in (("corral", CORRAL_SHIM), ("runc", RUNC_SHIM)):
                dt, r = one(exe, work, sock, f"{name}{i}")
                res[name].append(dt)
                rss[name].append(r)
        print(f"shim start → address printed (listening), {args.runs} alternating runs, this machine:")
        for name in res:
            v = sorted(res[name])
            print(f"  {name:7s} min {v[0]:6.2f} ms  median {statistics.median(v):6.2f} ms  "
                  f"max {v[-1]:6.2f} ms   idle RSS median {statistics.median(rss[name]) / 1024:.1f} MiB")
    finally:
        cd.send_signal(signal.SIGTERM)
        cd.wait()
        subprocess.run(["umount", "-R", work], stderr=subprocess.DEVNULL)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
