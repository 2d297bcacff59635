//! The Intel MultiProcessor Specification 1.4 table, through which a guest
//! without ACPI finds its vCPUs, the I/O APIC and the ISA interrupt routing.
//!
//! Written by hand: there is no maintained crate for it (Firecracker and
//! Cloud Hypervisor each keep their own in-tree). The table is serialised
//! field by field in little-endian order rather than through `repr(packed)`
//! structs, which keeps this module free of `unsafe`.
//!
//! Layout at [`EBDA_START`](crate::layout::EBDA_START), where Linux looks
//! ("last KiB of base memory"): the floating pointer, then the configuration
//! table: one processor entry per vCPU (APIC ID = vCPU index, vCPU 0 the
//! BSP), the ISA bus, the I/O APIC (ID = vCPU count), an interrupt
//! assignment for each I/O APIC pin, and ExtINT/NMI on every LAPIC's
//! LINT0/LINT1.

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};

use crate::layout::{ACPI_START, APIC_START, EBDA_START, IOAPIC_START};
use crate::memory::GuestMemoryMmap;

/// The largest vCPU count the table can describe: xAPIC IDs are 8 bits,
/// 0xff is the broadcast ID and one ID goes to the I/O APIC.
pub const MAX_MPTABLE_VCPUS: u32 = 254;

const IOAPIC_PINS: u8 = 24;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const SPEC_REVISION: u8 = 4;
/// Family 6 in the signature field; FPU and APIC in the feature flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IOINT: u8 = 3;
const ENTRY_LINT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const ALL_LAPICS: u8 = 0xff;

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;

/// The MP table could not be written.
#[derive(Debug, Error)]
pub enum MpTableError {
    /// More vCPUs than the table can describe.
    #[error("an MP table describes at most {MAX_MPTABLE_VCPUS} vCPUs, not {0}")]
    TooManyVcpus(u32),
    /// The table does not fit below the ACPI tables.
    #[error("the MP table ({0} bytes) does not fit below the ACPI tables at {ACPI_START:#x}")]
    TooLarge(usize),
    /// Guest memory refused the write.
    #[error("cannot write the MP table into guest memory")]
    Write(#[source] vm_memory::GuestMemoryError),
}

/// Builds the floating pointer and configuration table for `vcpus` vCPUs,
/// as the bytes to place at `base`.
pub fn build(vcpus: u32, base: u64) -> Result<Vec<u8>, MpTableError> {
    if vcpus == 0 || vcpus > MAX_MPTABLE_VCPUS {
        return Err(MpTableError::TooManyVcpus(vcpus));
    }
    let ioapic_id = vcpus as u8; // at most 254: checked above
    let table_addr = base + FLOATING_POINTER_LEN as u64;

    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for id in 0..ioapic_id {
        let flags = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, id, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    count += 1;
    for pin in 0..IOAPIC_PINS {
        // Conforming polarity and trigger; ISA IRQ n on pin n, as KVM's
        // default GSI routing has it.
        entries.extend_from_slice(&[ENTRY_IOINT, INT_TYPE_INT, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LINT, INT_TYPE_EXTINT, 0, 0, 0, 0, ALL_LAPICS, 0]);
    entries.extend_from_slice(&[ENTRY_LINT, INT_TYPE_NMI, 0, 0, 0, 0, ALL_LAPICS, 1]);
    count += 2;

    let table_len = HEADER_LEN + entries.len();
    let total = FLOATING_POINTER_LEN + table_len;
    if base + total as u64 > ACPI_START {
        return Err(MpTableError::TooLarge(total));
    }

    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.push(SPEC_REVISION);
    header.push(0); // checksum, below
    header.extend_from_slice(b"CORRAL  ");
    header.extend_from_slice(b"MICROVM     ");
    header.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    header.extend_from_slice(&0u32.to_le_bytes());
    let sum = checksum(&header).wrapping_add(checksum(&entries));
    header[7] = sum.wrapping_neg();

    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&(table_addr as u32).to_le_bytes());
    out.push(1); // length in 16-byte units
    out.push(SPEC_REVISION);
    out.push(0); // checksum, below
    out.extend_from_slice(&[0; 5]); // no default configuration; no IMCR
    out[10] = checksum(&out).wrapping_neg();
    out.extend_from_slice(&header);
    out.extend_from_slice(&entries);
    Ok(out)
}

/// Writes the MP table for `vcpus` vCPUs at [`EBDA_START`].
pub fn setup_mptable(mem: &GuestMemoryMmap, vcpus: u32) -> Result<(), MpTableError> {
    let table = build(vcpus, EBDA_START)?;
    mem.write_slice(&table, GuestAddress(EBDA_START))
        .map_err(MpTableError::Write)
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    #[test]
    fn checksums_and_counts_are_right() {
        for vcpus in [1, 2, 8, MAX_MPTABLE_VCPUS] {
            let t = build(vcpus, EBDA_START).unwrap();
            assert_eq!(checksum(&t[..16]), 0);
            assert_eq!(&t[..4], b"_MP_");
            let cfg = &t[16..];
            assert_eq!(&cfg[..4], b"PCMP");
            let len = u16_at(cfg, 4) as usize;
            assert_eq!(len, cfg.len());
            assert_eq!(checksum(cfg), 0);
            let entries = u16_at(cfg, 34) as u32;
            assert_eq!(entries, vcpus + 1 + 1 + 24 + 2);
            // Walk the entries: processors first, BSP flag only on the first.
            let mut at = HEADER_LEN;
            let mut cpus = 0;
            while at < len {
                match cfg[at] {
                    ENTRY_PROCESSOR => {
                        assert_eq!(cfg[at + 1] as u32, cpus);
                        assert_eq!(cfg[at + 3] & CPU_BSP != 0, cpus == 0);
                        cpus += 1;
                        at += 20;
                    }
                    ENTRY_IOAPIC => {
                        assert_eq!(cfg[at + 1] as u32, vcpus);
                        at += 8;
                    }
                    _ => at += 8,
                }
            }
            assert_eq!(cpus, vcpus);
        }
    }

    #[test]
    fn refuses_impossible_counts() {
        assert!(build(0, EBDA_START).is_err());
        assert!(matches!(
            build(MAX_MPTABLE_VCPUS + 1, EBDA_START),
            Err(MpTableError::TooManyVcpus(255))
        ));
        assert!(matches!(build(4, 0xfff00), Err(MpTableError::TooLarge(_))));
    }
}
