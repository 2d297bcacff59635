#!/usr/bin/env python3
"""Copies kernel modules and their dependencies, in load order.

Usage: modules.py KERNEL_MODULE_DIR OUT_DIR NAME...

Finds each NAME (a module name; '-' and '_' are the same) under
KERNEL_MODULE_DIR, follows the `depends=` string in each module's .modinfo
section (Debian's kernel package ships no modules.dep we could trust to
match a hand-picked subset, and L1 has no modprobe), copies every module
needed into OUT_DIR and writes OUT_DIR/order: one file name per line,
dependencies first.
"""
import os
import shutil
import sys


def norm(name):
    return name.replace("-", "_")


def depends(path):
    data = open(path, "rb").read()
    i = data.find(b"\0depends=")
    if i < 0:
        return []
    end = data.index(b"\0", i + 1)
    value = data[i + len(b"\0depends="):end].decode()
    return [d for d in value.split(",") if d]


def main():
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    src, out, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
    index = {}
    for root, _, files in os.walk(src):
        for f in files:
            if f.endswith(".ko"):
                index[norm(f[:-3])] = os.path.join(root, f)
    order, seen = [], set()

    def visit(name, chain):
        key = norm(name)
        if key in seen:
            return
        if key in chain:
            sys.exit(f"modules.py: dependency cycle through {name}")
        if key not in index:
            sys.exit(f"modules.py: no module {name!r} under {src}")
        for dep in depends(index[key]):
            visit(dep, chain + [key])
        seen.add(key)
        order.append(index[key])

    for name in wanted:
        visit(name, [])
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "order"), "w") as f:
        for path in order:
            shutil.copy(path, out)
            f.write(os.path.basename(path) + "\n")
    print("modules.py:", " ".join(os.path.basename(p)[:-3] for p in order), file=sys.stderr)


if __name__ == "__main__":
    main()
