#!/usr/bin/env python3
"""What a cgroup move costs: writing a thread's TID vs writing `0`.

Writing another thread's TID to a cgroup's `tasks` (v1) takes the kernel's
`cgroup_threadgroup_rwsem` for writing; its first writer after an idle
moment waits for an RCU grace period. Writing `0` moves the writer itself,
and for that case the kernel skips the lock (Linux >= 6.1). Corral's pod
lifecycle relies on the second (threads born in place, see
runtime/src/cgroup/selfmove.rs); this shows why, on this host.

Each round: a fresh thread sleeps 0.5 s (the lock goes idle), then moves
itself a -> b -> a -> home, either by writing its own TID ("tid") or `0`
("self0"); printed per write, in µs.

Usage: benches/cgroup_self_move.py [--rounds N] [--hierarchy cpu]   (root, cgroup v1)
"""

import argparse
import os
import threading
import time


def write(path, text):
    t = time.perf_counter()
    with open(path, "w") as f:
        f.write(text)
    return (time.perf_counter() - t) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--hierarchy", default="cpu")
    args = ap.parse_args()
    base = f"/sys/fs/cgroup/{args.hierarchy}"
    home = None
    for line in open("/proc/self/cgroup"):
        _, controllers, path = line.strip().split(":", 2)
        if args.hierarchy in controllers.split(","):
            home = base + path
    if home is None:
        raise SystemExit(f"no v1 {args.hierarchy} hierarchy: this measures cgroup v1 moves")
    dirs = [os.path.join(base, f"corral-move-{os.getpid()}-{n}") for n in "ab"]
    for d in dirs:
        os.mkdir(d)
    try:
        print(f"{'':6} {'-> a':>8} {'-> b':>8} {'-> a':>8} {'-> home':>8}  (µs)")
        for _ in range(args.rounds):
            for mode in ("tid", "self0"):
                out = []

                def trial():
                    time.sleep(0.5)
                    me = "0" if mode == "self0" else str(threading.get_native_id())
                    out.extend(write(os.path.join(d, "tasks"), me)
                               for d in (dirs[0], dirs[1], dirs[0], home))
                t = threading.Thread(target=trial)
                t.start()
                t.join()
                print(f"{mode:6} " + " ".join(f"{x:8.0f}" for x in out))
    finally:
        for d in dirs:
            os.rmdir(d)


if __name__ == "__main__":
    main()
