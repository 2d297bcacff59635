//! The boot vCPU's state at the kernel's entry, for each boot protocol, and
//! the local-APIC wiring every vCPU needs.
//!
//! - PVH: 32-bit protected mode, paging off, flat segments, EBX = start
//!   info, TR a 32-bit busy TSS (as the PVH ABI specifies).
//! - 64-bit Linux boot: long mode with identity page tables for the first
//!   GiB, flat 64-bit code segment, RSI = zero page.
//!
//! In both cases the GDT the segment registers describe is also written into
//! guest memory, so a guest that reloads a selector gets what it had.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};
use crate::loader::BootProtocol;
use crate::memory::GuestMemoryMmap;

const CR0_PE: u64 = 1;
const CR0_ET: u64 = 1 << 4;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
const RFLAGS_RESERVED: u64 = 1 << 1;
/// Page-table entry bits.
const PTE_PRESENT_RW: u64 = 0x3;
const PTE_HUGE: u64 = 0x80;

/// Local APIC register offsets and delivery modes.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

/// Register set-up failed.
#[derive(Debug, Error)]
pub enum RegsError {
    /// A KVM register ioctl failed.
    #[error("cannot {0} vCPU registers")]
    Kvm(&'static str, #[source] kvm_ioctls::Error),
    /// Guest memory refused a write.
    #[error("cannot write the boot {0} into guest memory")]
    GuestMemory(&'static str, #[source] vm_memory::GuestMemoryError),
}

/// A GDT entry from its flags (access byte in bits 0–7, G/DB/L/AVL in
/// 12–15), base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// The segment register a GDT entry at `index` loads.
fn segment(index: u16, entry: u64) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let access = (entry >> 40) as u8;
    let flags = (entry >> 52) as u8;
    let g = (flags >> 3) & 1;
    kvm_segment {
        base,
        limit: if g == 1 {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector: index * 8,
        type_: access & 0xf,
        present: access >> 7,
        dpl: (access >> 5) & 3,
        db: (flags >> 2) & 1,
        s: (access >> 4) & 1,
        l: (flags >> 1) & 1,
        g,
        avl: flags & 1,
        unusable: 0,
        padding: 0,
    }
}

/// GDT slots: Linux's boot protocol names `__BOOT_CS` = 0x10 and
/// `__BOOT_DS` = 0x18, so code and data sit in slots 2 and 3.
const CODE_SLOT: u16 = 2;
const DATA_SLOT: u16 = 3;
const TSS_SLOT: u16 = 4;

/// The boot GDT for a protocol: null, null, code, data, TSS.
fn boot_gdt(protocol: &BootProtocol) -> [u64; 5] {
    match protocol {
        BootProtocol::Pvh { .. } => [
            0,
            0,
            gdt_entry(0xc09b, 0, 0xfffff), // 32-bit code
            gdt_entry(0xc093, 0, 0xfffff), // data
            gdt_entry(0x008b, 0, 0x67),    // 32-bit busy TSS
        ],
        BootProtocol::Linux64 { .. } => [
            0,
            0,
            gdt_entry(0xa09b, 0, 0xfffff), // 64-bit code
            gdt_entry(0xc093, 0, 0xfffff), // data
            gdt_entry(0x808b, 0, 0xfffff), // TSS
        ],
    }
}

/// Writes the boot GDT (and an empty IDT) and, for 64-bit boot, the
/// identity page tables; returns the special registers to load.
pub fn setup_boot_memory(
    mem: &GuestMemoryMmap,
    protocol: &BootProtocol,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let gdt = boot_gdt(protocol);
    for (i, e) in gdt.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(|e| RegsError::GuestMemory("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(|e| RegsError::GuestMemory("IDT", e))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = (gdt.len() * 8 - 1) as u16;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = segment(CODE_SLOT, gdt[usize::from(CODE_SLOT)]);
    let data = segment(DATA_SLOT, gdt[usize::from(DATA_SLOT)]);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(TSS_SLOT, gdt[usize::from(TSS_SLOT)]);

    match protocol {
        BootProtocol::Pvh { .. } => {
            sregs.cr0 = CR0_PE | CR0_ET;
            sregs.cr3 = 0;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
        BootProtocol::Linux64 { .. } => {
            write_identity_page_tables(mem)?;
            sregs.cr0 = CR0_PE | CR0_ET | CR0_PG;
            sregs.cr3 = PML4_START;
            sregs.cr4 = CR4_PAE;
            sregs.efer = EFER_LME | EFER_LMA;
        }
    }
    Ok(sregs)
}

/// Identity-maps the first GiB with 2 MiB pages.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    let w = |value: u64, addr: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .map_err(|e| RegsError::GuestMemory("page tables", e))
    };
    w(PDPTE_START | PTE_PRESENT_RW, PML4_START)?;
    w(PDE_START | PTE_PRESENT_RW, PDPTE_START)?;
    for i in 0..512u64 {
        w((i << 21) | PTE_HUGE | PTE_PRESENT_RW, PDE_START + i * 8)?;
    }
    Ok(())
}

/// General registers at the kernel's entry.
pub fn boot_regs(protocol: &BootProtocol) -> kvm_regs {
    match *protocol {
        BootProtocol::Pvh { entry } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry,
            rbx: PVH_INFO_START,
            ..Default::default()
        },
        BootProtocol::Linux64 { entry, .. } => kvm_regs {
            rflags: RFLAGS_RESERVED,
            rip: entry,
            rsp: BOOT_STACK_POINTER,
            rbp: BOOT_STACK_POINTER,
            rsi: ZERO_PAGE_START,
            ..Default::default()
        },
    }
}

/// Loads the boot state into the boot vCPU.
pub fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    mem: &GuestMemoryMmap,
    protocol: &BootProtocol,
) -> Result<(), RegsError> {
    let sregs = vcpu.get_sregs().map_err(|e| RegsError::Kvm("read", e))?;
    let sregs = setup_boot_memory(mem, protocol, sregs)?;
    vcpu.set_sregs(&sregs)
        .map_err(|e| RegsError::Kvm("set special", e))?;
    vcpu.set_regs(&boot_regs(protocol))
        .map_err(|e| RegsError::Kvm("set general", e))
}

/// x87 and SSE control words at their reset values.
pub fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(|e| RegsError::Kvm("set FPU", e))
}

/// Wires LINT0 to ExtINT (the PIC) and LINT1 to NMI, as firmware does.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic = vcpu
        .get_lapic()
        .map_err(|e| RegsError::Kvm("read local APIC", e))?;
    for (reg, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
        let bytes: [u8; 4] = std::array::from_fn(|i| lapic.regs[reg + i] as u8);
        let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            lapic.regs[reg + i] = b as _;
        }
    }
    vcpu.set_lapic(&lapic)
        .map_err(|e| RegsError::Kvm("set local APIC", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_segments() {
        let code64 = segment(CODE_SLOT, gdt_entry(0xa09b, 0, 0xfffff));
        assert_eq!((code64.l, code64.db, code64.g, code64.dpl), (1, 0, 1, 0));
        assert_eq!((code64.type_, code64.present, code64.s), (0xb, 1, 1));
        assert_eq!(code64.limit, 0xffff_ffff);
        assert_eq!(code64.selector, 0x10, "Linux's __BOOT_CS");
        assert_eq!(segment(DATA_SLOT, 0).selector, 0x18, "Linux's __BOOT_DS");
        let tss = segment(3, gdt_entry(0x008b, 0, 0x67));
        assert_eq!((tss.limit, tss.g, tss.s, tss.type_), (0x67, 0, 0, 0xb));
        let based = segment(2, gdt_entry(0xc093, 0x1234_5678, 0xfffff));
        assert_eq!(based.base, 0x1234_5678);
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }
}
