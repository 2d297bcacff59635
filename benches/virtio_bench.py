#!/usr/bin/env python3
"""virtio device benchmarks: Corral vs QEMU microvm (KVM), same test guest.

Both VMMs boot the same test-guest binary; its drivers (ring 3, polling)
print `start`/`done` lines and the host timestamps them as they arrive.
Runs alternate Corral/QEMU; each figure is the median of --runs runs.

- virtio-blk: sequential and random, 4 KiB and 64 KiB, write then read,
  --blk-mib MiB per pass at queue depth --depth, on a raw file (both VMMs
  use the host page cache: Corral always, QEMU by its default cache=writeback).
- virtio-net: frames/s and bytes/s of 1514-byte frames each way over a tap
  in a private network namespace; the host end is examples/frames.rs
  (packet sockets, batched) so that it is not the bottleneck.
- virtio-vsock (Corral only; QEMU has no vhost-vsock here): echo streams
  guest→host and host→guest, against a plain Unix-socket echo on the host
  as the ceiling.

Usage: benches/virtio_bench.py [--runs N] [--blk-mib M] [--frames N] [--vsock-mib M]
Needs root (network namespaces, taps) and `cargo build --release --example frames`.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORRAL = os.path.join(ROOT, "target/release/corral")
FRAMES = os.path.join(ROOT, "target/release/examples/frames")
GUEST = os.path.join(ROOT, "test-guest/target/release/corral-test-guest")
WORK = "/tmp/corral-virtio-bench"
NS = "corral-bench"
TAP = "tapb0"


def qemu_base(netns=False):
    cmd = ["ip", "netns", "exec", NS] if netns else []
    return cmd + [
        "qemu-system-x86_64",
        "-M", "microvm,x-option-roms=off,isa-serial=on,rtc=off,acpi=off",
        "-accel", "kvm", "-cpu", "host,-arch-capabilities", "-m", "256", "-smp", "1",
        "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
        "-global", "virtio-mmio.force-legacy=false",
        "-serial", "null",
        "-chardev", "stdio,id=vc", "-device", "virtio-serial-device",
        "-device", "virtconsole,chardev=vc",
        "-kernel", GUEST,
    ]


QEMU_GUEST_ARGS = "uart=none boot_timer=none poweroff=none"


CORRAL_EXTRA = []


def corral_base(netns=False):
    cmd = ["ip", "netns", "exec", NS] if netns else []
    return cmd + [CORRAL, "run", "--kernel", GUEST, "--memory", "256"] + CORRAL_EXTRA


def run_timed(cmd, on_line=None, timeout=600):
    """Runs cmd; returns [(time, line)] with host timestamps per line."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, errors="replace")
    lines = []
    for line in proc.stdout:
        t = time.perf_counter()
        lines.append((t, line.rstrip("\r\n")))
        if on_line:
            on_line(line)
        if t - start > timeout:
            proc.kill()
            break
    proc.wait()
    text = "\n".join(l for _, l in lines)
    if "result: ok" not in text:
        sys.exit(f"run failed: {' '.join(cmd)}\n{text}\n{proc.stderr.read()}")
    return lines


def spans(lines, prefix):
    """{name: (seconds, done-line words)} for `prefix NAME start`/`done` pairs."""
    out, starts = {}, {}
    for t, l in lines:
        if not l.startswith(prefix):
            continue
        words = l[len(prefix):].split()
        if "start" in words:
            starts[" ".join(words[:words.index("start")])] = t
        elif "done" in words:
            name = " ".join(words[:words.index("done")])
            if name in starts:
                out[name] = (t - starts[name], words[words.index("done") + 1:])
    return out


def blk(args, results):
    disk = os.path.join(WORK, "disk.img")
    if not os.path.exists(disk) or os.path.getsize(disk) != 512 << 20:
        with open(disk, "wb") as f:
            chunk = os.urandom(1 << 20)
            for _ in range(512):
                f.write(chunk)
    wl = f"workload=blkbench bench_mib={args.blk_mib} depth={args.depth}"
    cmds = {
        "corral": corral_base() + ["--disk", disk, "--cmdline", wl],
        "qemu": qemu_base() + ["-drive", f"file={disk},format=raw,if=none,id=d0",
                               "-device", "virtio-blk-device,drive=d0",
                               "-append", f"{QEMU_GUEST_ARGS} {wl}"],
    }
    for _ in range(args.runs):
        for vmm, cmd in cmds.items():
            for name, (secs, words) in spans(run_timed(cmd), "bench blk ").items():
                ops, nbytes = int(words[0]), int(words[2])
                results.setdefault(("blk " + name, "MB/s"), {}).setdefault(vmm, []).append(nbytes / secs / 1e6)
                results.setdefault(("blk " + name, "IOPS"), {}).setdefault(vmm, []).append(ops / secs)


def net_setup():
    subprocess.run(["ip", "netns", "del", NS], stderr=subprocess.DEVNULL)
    for cmd in (["ip", "netns", "add", NS],
                ["ip", "netns", "exec", NS, "ip", "tuntap", "add", TAP, "mode", "tap"],
                ["ip", "netns", "exec", NS, "ip", "link", "set", TAP, "up"]):
        subprocess.run(cmd, check=True)


def net(args, results):
    net_setup()
    wl = f"workload=netbench frames={args.frames}"
    cmds = {
        "corral": corral_base(True) + ["--net", TAP, "--cmdline", wl],
        "qemu": qemu_base(True) + ["-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no,vhost=off",
                                   "-device", "virtio-net-device,netdev=n0",
                                   "-append", f"{QEMU_GUEST_ARGS} {wl}"],
    }
    for _ in range(args.runs):
        for vmm, cmd in cmds.items():
            counter = subprocess.Popen(["ip", "netns", "exec", NS, FRAMES, "count", TAP, "3000"],
                                       stdout=subprocess.PIPE, text=True)
            assert counter.stdout.readline().strip() == "ready"

            def on_line(line):
                if "bench net rx ready" in line:
                    threading.Thread(target=subprocess.run, daemon=True, args=(
                        ["ip", "netns", "exec", NS, FRAMES, "send", TAP, str(args.frames)],),
                        kwargs={"stdout": subprocess.DEVNULL}).start()
            lines = run_timed(cmd, on_line)
            host_rx = counter.communicate()[0].split()
            s = spans(lines, "bench net ")
            tx_secs = s["tx"][0]
            got = int(host_rx[0])
            results.setdefault(("net guest→host", "frames/s"), {}).setdefault(vmm, []).append(got / tx_secs)
            results.setdefault(("net guest→host", "MB/s"), {}).setdefault(vmm, []).append(int(host_rx[2]) / tx_secs / 1e6)
            results.setdefault(("net guest→host", "delivered %"), {}).setdefault(vmm, []).append(100 * got / args.frames)
            rx_secs, words = s["rx"]
            frames, nbytes = int(words[0]), int(words[2])
            results.setdefault(("net host→guest", "frames/s"), {}).setdefault(vmm, []).append(frames / rx_secs)
            results.setdefault(("net host→guest", "MB/s"), {}).setdefault(vmm, []).append(nbytes / rx_secs / 1e6)
    subprocess.run(["ip", "netns", "del", NS])


def echo_server(path):
    if os.path.exists(path):
        os.unlink(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)

    def echo(c):
        while True:
            d = c.recv(1 << 20)
            if not d:
                break
            c.sendall(d)
        c.close()

    def serve():
        while True:
            c, _ = srv.accept()
            threading.Thread(target=echo, args=(c,), daemon=True).start()
    threading.Thread(target=serve, daemon=True).start()


def echo_client(connect, nbytes):
    """Sends nbytes through an echo and reads them back; returns seconds."""
    s = connect()
    data = os.urandom(1 << 20)
    got = [0]

    def rd():
        while got[0] < nbytes:
            d = s.recv(1 << 20)
            if not d:
                break
            got[0] += len(d)
    t = threading.Thread(target=rd)
    t0 = time.perf_counter()
    t.start()
    for _ in range(nbytes >> 20):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    t.join()
    dt = time.perf_counter() - t0
    s.close()
    assert got[0] == nbytes, (got[0], nbytes)
    return dt


def vsock(args, results):
    uds = os.path.join(WORK, "v.sock")
    echo_server(uds + "_6000")
    nbytes = args.vsock_mib << 20
    wl = f"workload=vsockbench stream_mib={args.vsock_mib} streams=1"
    for _ in range(args.runs):
        h2g = []

        def connect():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(uds)
            s.sendall(b"CONNECT 5000\n")
            line = b""
            while not line.endswith(b"\n"):
                line += s.recv(1)
            return s

        def on_line(line):
            if "listening on port 5000" in line:
                threading.Thread(target=lambda: h2g.append(echo_client(connect, nbytes)), daemon=True).start()
        lines = run_timed(corral_base() + ["--vsock", f"3,{uds}", "--cmdline", wl], on_line)
        secs, _ = spans(lines, "bench vsock ")["g2h"]
        results.setdefault(("vsock echo guest→host", "MB/s"), {}).setdefault("corral", []).append(2 * nbytes / secs / 1e6)
        results.setdefault(("vsock echo host→guest", "MB/s"), {}).setdefault("corral", []).append(2 * nbytes / h2g[0] / 1e6)

        def unix_connect():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(uds + "_6000")
            return s
        ceiling = 2 * nbytes / echo_client(unix_connect, nbytes) / 1e6
        for key in ("vsock echo guest→host", "vsock echo host→guest"):
            results[(key, "MB/s")].setdefault("unix socket (ceiling)", []).append(ceiling)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--blk-mib", type=int, default=64)
    ap.add_argument("--depth", type=int, default=16)
    ap.add_argument("--frames", type=int, default=200000)
    ap.add_argument("--vsock-mib", type=int, default=64)
    ap.add_argument("--only", choices=["blk", "net", "vsock"])
    ap.add_argument("--seccomp", choices=["on", "off"], default="on",
                    help="corral's seccomp filters (run both to see their cost)")
    args = ap.parse_args()
    CORRAL_EXTRA.extend(["--seccomp", args.seccomp])
    for path in (CORRAL, GUEST, FRAMES):
        if not os.path.exists(path):
            sys.exit(f"{path} is missing: cargo build --release && cargo build --release --example frames")
    os.makedirs(WORK, exist_ok=True)
    results = {}
    for name, fn in (("blk", blk), ("net", net), ("vsock", vsock)):
        if args.only in (None, name):
            fn(args, results)
    print(f"medians of {args.runs} alternating runs (test guest, 1 vCPU; corral seccomp {args.seccomp})")
    print(f"{'figure':34} {'unit':>12} {'corral':>12} {'qemu':>12} {'ratio':>7}")
    for (fig, unit), by in results.items():
        c = statistics.median(by["corral"])
        other = by.get("qemu") or by.get("unix socket (ceiling)")
        o = statistics.median(other) if other else float("nan")
        label = "qemu" if "qemu" in by else "ceiling"
        print(f"{fig:34} {unit:>12} {c:12.1f} {o:12.1f} {c / o:7.3f}" + ("" if label == "qemu" else "  (vs Unix-socket ceiling)"))


if __name__ == "__main__":
    main()
