#!/usr/bin/env python3
"""Writes a cpio archive (newc format, as the Linux initramfs wants) from a
gen_init_cpio-style list, without needing root for device nodes. Output is
reproducible: mtimes are 0 and inode numbers follow the list order.

Usage: mkcpio.py LIST > archive.cpio
"""
import os
import stat
import sys

TYPES = {"dir": stat.S_IFDIR, "file": stat.S_IFREG, "slink": stat.S_IFLNK}


def header(ino, mode, uid, gid, nlink, size, name, rdev=(0, 0)):
    fields = [ino, mode, uid, gid, nlink, 0, size, 0, 0, rdev[0], rdev[1], len(name) + 1, 0]
    return b"070701" + b"".join(b"%08X" % f for f in fields) + name + b"\0"


def pad(buf):
    return buf + b"\0" * (-len(buf) % 4)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.stdout.buffer
    ino = 0
    for lineno, raw in enumerate(open(sys.argv[1]), 1):
        words = os.path.expandvars(raw).split()
        if not words or words[0].startswith("#"):
            continue
        kind, path = words[0], words[1].lstrip("/").encode()
        ino += 1
        try:
            if kind == "dir":
                mode, uid, gid = int(words[2], 8), int(words[3]), int(words[4])
                out.write(pad(header(ino, stat.S_IFDIR | mode, uid, gid, 2, 0, path)))
            elif kind == "file":
                data = open(words[2], "rb").read()
                mode, uid, gid = int(words[3], 8), int(words[4]), int(words[5])
                out.write(pad(header(ino, stat.S_IFREG | mode, uid, gid, 1, len(data), path)))
                out.write(pad(data))
            elif kind == "slink":
                target = words[2].encode()
                mode, uid, gid = int(words[3], 8), int(words[4]), int(words[5])
                out.write(pad(header(ino, stat.S_IFLNK | mode, uid, gid, 1, len(target), path)))
                out.write(pad(target))
            elif kind == "nod":
                mode, uid, gid = int(words[2], 8), int(words[3]), int(words[4])
                kind_bit = stat.S_IFCHR if words[5] == "c" else stat.S_IFBLK
                rdev = (int(words[6]), int(words[7]))
                out.write(pad(header(ino, kind_bit | mode, uid, gid, 1, 0, path, rdev)))
            else:
                sys.exit(f"{sys.argv[1]}:{lineno}: unknown entry type '{kind}'")
        except (IndexError, ValueError, OSError) as e:
            sys.exit(f"{sys.argv[1]}:{lineno}: {e}")
    out.write(pad(header(0, 0, 0, 0, 1, 0, b"TRAILER!!!")))


if __name__ == "__main__":
    main()
