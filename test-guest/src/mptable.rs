//! Finds the MP floating pointer where the MultiProcessor Specification
//! says to look (EBDA, last KiB of base memory, BIOS ROM area) and lists the
//! enabled processors' APIC IDs from the configuration table.

use crate::mmio;

/// Processors found, boot CPU first.
pub struct Cpus {
    pub apic_ids: [u8; 64],
    pub count: usize,
}

fn checksum_ok(addr: u64, len: u64) -> bool {
    (0..len).fold(0u8, |s, i| s.wrapping_add(mmio::read::<u8>(addr + i))) == 0
}

fn find_floating_pointer() -> Option<u64> {
    let ebda = u64::from(mmio::read::<u16>(0x40e)) << 4;
    let areas = [(ebda, 1024), (0x9fc00, 1024), (0xf0000, 0x10000)];
    areas
        .into_iter()
        .filter(|(start, _)| *start != 0)
        .find_map(|(start, len)| {
            (start..start + len)
                .step_by(16)
                .find(|&p| mmio::read::<[u8; 4]>(p) == *b"_MP_" && checksum_ok(p, 16))
        })
}

/// The processors of the MP table, or None if there is no valid table.
pub fn cpus() -> Option<Cpus> {
    let fp = find_floating_pointer()?;
    let table = u64::from(mmio::read::<u32>(fp + 4));
    if table == 0 || mmio::read::<[u8; 4]>(table) != *b"PCMP" {
        return None;
    }
    let len = u64::from(mmio::read::<u16>(table + 4));
    if !checksum_ok(table, len) {
        return None;
    }
    let mut cpus = Cpus {
        apic_ids: [0; 64],
        count: 0,
    };
    // Walk by length, as Linux does: some firmware (qboot) leaves the entry
    // count at zero.
    let mut at = table + 44;
    while at < table + len {
        match mmio::read::<u8>(at) {
            0 => {
                let id: u8 = mmio::read(at + 1);
                let flags: u8 = mmio::read(at + 3);
                if flags & 1 != 0 && cpus.count < cpus.apic_ids.len() {
                    // Keep the boot CPU first.
                    if flags & 2 != 0 && cpus.count > 0 {
                        cpus.apic_ids[cpus.count] = cpus.apic_ids[0];
                        cpus.apic_ids[0] = id;
                    } else {
                        cpus.apic_ids[cpus.count] = id;
                    }
                    cpus.count += 1;
                }
                at += 20;
            }
            _ => at += 8,
        }
    }
    Some(cpus)
}
