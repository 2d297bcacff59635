#!/usr/bin/env python3
"""A guest every VMM here can boot: a PVH ELF of 25 instructions.

Corral's test guest ends the VM from ring 3 by MMIO, which Cloud
Hypervisor has no register for, and Cloud Hypervisor treats a triple
fault as a reboot. This stub runs in ring 0 (32-bit protected mode, as
PVH enters it): it prints BANNER on COM1 (port 0x3f8), then tries each
VMM's way to power off in turn, so the same file measures them all:
  - Corral:              S5 to the ACPI sleep register, MMIO 0xd0002000;
  - QEMU microvm:        S5 to the generic event device, MMIO 0xfea00200;
  - Cloud Hypervisor:    S5 to its ACPI PM port 0x600;
  - Firecracker:         i8042 reset (0xfe to port 0x64);
  - anything else:       ud2 with no IDT (a triple fault; QEMU -no-reboot
                         exits on it).
Hand-assembled (no assembler needed); each instruction's bytes are
commented. Written next to the other bench inputs, not kept in the tree.

Usage: benches/pvh_stub.py OUT.elf
"""

import struct
import sys

LOAD_ADDR = 0x100000
BANNER = b"pvh-stub: booting\n"
ENTRY_OFFSET = 0x100  # code starts here in the file (and at LOAD_ADDR + this)
S5 = 0x34  # SLP_TYP = 5, SLP_EN


def code(msg_addr):
    c = b""
    c += b"\xbe" + struct.pack("<I", msg_addr)   # mov esi, msg
    c += b"\x66\xba\xf8\x03"                     # mov dx, 0x3f8
    # loop (offset 9):
    c += b"\xac"                                 # lodsb
    c += b"\x84\xc0"                             # test al, al
    c += b"\x74\x03"                             # jz done (+3)
    c += b"\xee"                                 # out dx, al
    c += b"\xeb\xf8"                             # jmp loop (-8)
    # done (offset 17):
    c += b"\xc6\x05" + struct.pack("<I", 0xD0002000) + bytes([S5])  # Corral
    c += b"\xc6\x05" + struct.pack("<I", 0xFEA00200) + bytes([S5])  # QEMU microvm
    c += b"\x66\xba\x00\x06"                     # mov dx, 0x600
    c += bytes([0xB0, S5])                       # mov al, S5
    c += b"\xee"                                 # out dx, al  (Cloud Hypervisor)
    c += b"\xb0\xfe"                             # mov al, 0xfe
    c += b"\xe6\x64"                             # out 0x64, al (Firecracker)
    c += b"\x0f\x0b"                             # ud2
    return c


def elf():
    body = bytearray(0x200)
    msg_off = ENTRY_OFFSET + 0x80
    text = code(LOAD_ADDR + msg_off)
    assert len(text) < 0x80
    body[ENTRY_OFFSET:ENTRY_OFFSET + len(text)] = text
    body[msg_off:msg_off + len(BANNER) + 1] = BANNER + b"\0"
    # The PVH note: "Xen", type 18 (XEN_ELFNOTE_PHYS32_ENTRY), 4-byte entry.
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", LOAD_ADDR + ENTRY_OFFSET)
    note_off = 0xB0
    body[note_off:note_off + len(note)] = note
    ehdr = struct.pack("<4sBBBBB7sHHIQQQIHHHHHH", b"\x7fELF", 2, 1, 1, 0, 0, b"\0" * 7,
                       2, 62, 1, LOAD_ADDR + ENTRY_OFFSET, 64, 0, 0, 64, 56, 2, 64, 0, 0)
    load = struct.pack("<IIQQQQQQ", 1, 7, 0, LOAD_ADDR, LOAD_ADDR, len(body), len(body), 0x1000)
    pnote = struct.pack("<IIQQQQQQ", 4, 4, note_off, LOAD_ADDR + note_off,
                        LOAD_ADDR + note_off, len(note), len(note), 4)
    body[0:64] = ehdr
    body[64:64 + 56] = load
    body[120:120 + 56] = pnote
    return bytes(body)


def write(path):
    with open(path, "wb") as f:
        f.write(elf())
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__.strip().splitlines()[-1])
    write(sys.argv[1])
