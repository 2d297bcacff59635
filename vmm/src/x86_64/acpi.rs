//! ACPI tables for guests built with ACPI: the vCPUs and interrupt
//! controllers (MADT), power-off and reset (FADT, DSDT `\_S5_`), and which
//! devices interrupt on which GSI (DSDT).
//!
//! Built with rust-vmm's `acpi_tables` and placed from
//! [`ACPI_START`](crate::layout::ACPI_START), inside the e820 range reserved
//! below 1 MiB: the RSDP first (0xe0000, where Linux also scans for it),
//! then DSDT, MADT, FADT and XSDT, each 16-byte aligned. The boot parameters
//! carry the RSDP's address (PVH `rsdp_paddr`, zero page `acpi_rsdp_addr`).
//! The MP table stays for guests without ACPI.
//!
//! The platform is ACPI "hardware-reduced": no PM1/GPE blocks, no SCI, no
//! FACS. The FADT's SLEEP_CONTROL, SLEEP_STATUS and RESET registers are
//! Corral's MMIO power block (`corral_devices::power`): a power-off writes
//! SLP_TYP 5 (the DSDT's `\_S5_`) | SLP_EN = 0x34, a reset writes
//! [`RESET_VALUE`].
//!
//! Hardware-reduced mode costs something on x86 Linux: it drops the legacy
//! PIC and with it the identity mapping of ISA IRQs, so only devices that
//! ACPI describes with their GSI get working interrupts. The DSDT therefore
//! describes COM1 (PNP0501, IRQ 4) and every virtio-mmio slot (LNRO0005).
//! The command line's `virtio_mmio.device=` entries stay for guests without
//! ACPI; an ACPI guest rejects them (its DSDT devices already hold those
//! windows), logging a line or two per device, and uses the DSDT's.
//! Linux 6.1 loads the DSDT only if built with CONFIG_PCI (ACPICA fails to
//! install its default PCI_Config region handler otherwise); `pci=off` is
//! fine. Without the DSDT there is neither S5 nor a working device IRQ.
//!
//! MADT: one local APIC per vCPU (APIC ID and processor UID = vCPU index,
//! as in CPUID and the MP table), the I/O APIC (ID = vCPU count, GSI base 0,
//! as in the MP table) and NMI on every LAPIC's LINT1. The MP table routes
//! ISA IRQ n to pin n with conforming polarity and trigger, which is what
//! ACPI assumes without overrides, so there are no interrupt source
//! overrides (QEMU's IRQ 0 → GSI 2 would be wrong here: KVM's default
//! routing puts the PIT on pin 0).

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::madt::{
    EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT,
};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use corral_devices::legacy::serial::SERIAL_REGISTERS;
use corral_devices::power::{RESET, RESET_VALUE, SLEEP_CONTROL, SLEEP_STATUS};
use corral_devices::virtio::VIRTIO_MMIO_SLOT_SIZE;
use thiserror::Error;
use vm_memory::{Bytes, GuestAddress};
use zerocopy::{Immutable, IntoBytes};

use crate::layout::{
    ACPI_END, ACPI_START, APIC_START, IOAPIC_START, POWER_REGISTERS_START, SERIAL_IRQ,
    SERIAL_PORT_BASE,
};
use crate::memory::GuestMemoryMmap;
use crate::virtio_devices::Slot;
use crate::x86_64::mptable::MAX_MPTABLE_VCPUS;

const OEM_ID: [u8; 6] = *b"CORRAL";
/// The same in every table: the FADT's must match the XSDT's.
const OEM_TABLE_ID: [u8; 8] = *b"MICROVM ";
const OEM_REVISION: u32 = 1;
const HYPERVISOR_VENDOR: [u8; 8] = *b"CORRALVM";
/// DSDT revision 2 and up: 64-bit AML integers.
const DSDT_REVISION: u8 = 2;
/// SLP_TYP of S5, as `corral_devices::power` decodes it.
const SLP_TYP_S5: u8 = 5;
/// FADT IA-PC boot architecture flags: an 8042 (Corral's i8042 carries the
/// reset line), no VGA, no CMOS RTC.
const IAPC_8042: u16 = 1 << 1;
const IAPC_NO_VGA: u16 = 1 << 2;
const IAPC_NO_CMOS_RTC: u16 = 1 << 5;
/// MADT structure type of a Local APIC NMI.
const MADT_LOCAL_APIC_NMI: u8 = 4;
/// Processor UID meaning "every processor".
const ALL_PROCESSORS: u8 = 0xff;
const TABLE_ALIGN: usize = 16;

/// The ACPI tables could not be built or written.
#[derive(Debug, Error)]
pub enum AcpiError {
    /// More (or fewer) vCPUs than the MADT's xAPIC entries can describe.
    #[error("the ACPI tables describe 1 to {MAX_MPTABLE_VCPUS} vCPUs, not {0}")]
    VcpuCount(u32),
    /// A virtio-mmio window lies above 4 GiB (a DSDT Memory32Fixed cannot say).
    #[error("virtio-mmio window {0:#x} is above 4 GiB")]
    MmioAbove4GiB(u64),
    /// The tables do not fit in their room below 1 MiB.
    #[error("the ACPI tables ({0} bytes) do not fit between {ACPI_START:#x} and {ACPI_END:#x}")]
    NoRoom(usize),
    /// Guest memory refused the write.
    #[error("cannot write the ACPI tables into guest memory")]
    GuestWrite(#[source] vm_memory::GuestMemoryError),
}

/// Builds the tables for `vcpus` vCPUs and the virtio devices in `virtio`,
/// as the bytes to place at [`ACPI_START`], the RSDP first.
pub fn build(vcpus: u32, virtio: &[Slot]) -> Result<Vec<u8>, AcpiError> {
    let madt = madt(vcpus)?;
    let dsdt = dsdt(virtio)?;
    // Each table is placed once the addresses it points at are known; the
    // RSDP, which points at the XSDT, keeps the first slot.
    let mut image = vec![0; Rsdp::len()];
    let dsdt_addr = append(&mut image, &dsdt);
    let madt_addr = append(&mut image, &madt);
    let fadt_addr = append(&mut image, &fadt(dsdt_addr));
    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_addr);
    xsdt.add_entry(madt_addr);
    let xsdt_addr = append(&mut image, &bytes(&xsdt));
    image[..Rsdp::len()].copy_from_slice(&bytes(&Rsdp::new(OEM_ID, xsdt_addr)));
    if ACPI_START + image.len() as u64 > ACPI_END {
        return Err(AcpiError::NoRoom(image.len()));
    }
    Ok(image)
}

/// Writes the tables at [`ACPI_START`]; returns the RSDP's address.
pub fn setup_acpi(mem: &GuestMemoryMmap, vcpus: u32, virtio: &[Slot]) -> Result<u64, AcpiError> {
    let image = build(vcpus, virtio)?;
    mem.write_slice(&image, GuestAddress(ACPI_START))
        .map_err(AcpiError::GuestWrite)?;
    Ok(ACPI_START)
}

/// Appends `table` to `image` at the next aligned offset; returns its
/// guest address.
fn append(image: &mut Vec<u8>, table: &[u8]) -> u64 {
    image.resize(image.len().next_multiple_of(TABLE_ALIGN), 0);
    let addr = ACPI_START + image.len() as u64;
    image.extend_from_slice(table);
    addr
}

fn bytes(table: &dyn Aml) -> Vec<u8> {
    let mut out = Vec::new();
    table.to_aml_bytes(&mut out);
    out
}

/// One byte-wide register of the power block, as a generic address.
fn power_register(offset: u64) -> GAS {
    GAS::new(
        AddressSpace::SystemMemory,
        8,
        0,
        AccessSize::ByteAccess,
        POWER_REGISTERS_START + offset,
    )
}

fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let mut fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        // No fixed-feature buttons (there are none in hardware-reduced ACPI).
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_addr);
    // The builder has no setters for these; its fields are public.
    fadt.iapc_boot_arch = (IAPC_8042 | IAPC_NO_VGA | IAPC_NO_CMOS_RTC).into();
    fadt.reset_reg = power_register(RESET);
    fadt.reset_value = RESET_VALUE;
    fadt.sleep_control_reg = power_register(SLEEP_CONTROL);
    fadt.sleep_status_reg = power_register(SLEEP_STATUS);
    fadt.hypervisor_vendor_identity = u64::from_le_bytes(HYPERVISOR_VENDOR).into();
    bytes(&fadt.finalize())
}

/// MADT Local APIC NMI structure (ACPI 6.5, 5.2.12.7), written here because
/// `acpi_tables` 0.2 has none: NMI on LINT1 of every processor, as the MP
/// table says. Flags 0: conforming polarity and trigger.
#[repr(C)]
#[derive(Clone, Copy, IntoBytes, Immutable)]
struct LocalApicNmi {
    kind: u8,
    length: u8,
    processor_uid: u8,
    flags: [u8; 2],
    lint: u8,
}

impl Aml for LocalApicNmi {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        sink.vec(self.as_bytes());
    }
}

fn madt(vcpus: u32) -> Result<Vec<u8>, AcpiError> {
    let ioapic_id = u8::try_from(vcpus)
        .ok()
        .filter(|&n| n > 0 && u32::from(n) <= MAX_MPTABLE_VCPUS)
        .ok_or(AcpiError::VcpuCount(vcpus))?;
    let mut madt = MADT::new(
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
        LocalInterruptController::Address(APIC_START as u32),
    );
    for id in 0..ioapic_id {
        madt.add_structure(ProcessorLocalApic::new(id, id, EnabledStatus::Enabled));
    }
    madt.add_structure(IoApic::new(ioapic_id, IOAPIC_START as u32, 0));
    madt.add_structure(LocalApicNmi {
        kind: MADT_LOCAL_APIC_NMI,
        length: std::mem::size_of::<LocalApicNmi>() as u8,
        processor_uid: ALL_PROCESSORS,
        flags: [0; 2],
        lint: 1,
    });
    Ok(bytes(&madt))
}

/// An edge-triggered, active-high, exclusive interrupt consumed by the device.
fn edge_interrupt(gsi: u32) -> aml::Interrupt {
    aml::Interrupt::new(true, true, false, false, gsi)
}

/// `acpi_tables` has no DSDT type; its generic `Sdt` makes the header.
fn dsdt(virtio: &[Slot]) -> Result<Vec<u8>, AcpiError> {
    let mut devices = Vec::new();
    let com1_ports = aml::IO::new(
        SERIAL_PORT_BASE as u16,
        SERIAL_PORT_BASE as u16,
        1,
        SERIAL_REGISTERS as u8,
    );
    let com1_irq = edge_interrupt(SERIAL_IRQ);
    let com1_crs = aml::ResourceTemplate::new(vec![&com1_ports, &com1_irq]);
    aml::Device::new(
        "COM1".into(),
        vec![
            &aml::Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
            &aml::Name::new("_UID".into(), &aml::ZERO),
            &aml::Name::new("_CRS".into(), &com1_crs),
        ],
    )
    .to_aml_bytes(&mut devices);
    // At most VIRTIO_IRQS.len() slots, so the names stay four characters.
    for (index, slot) in virtio.iter().enumerate() {
        let base = u32::try_from(slot.base).map_err(|_| AcpiError::MmioAbove4GiB(slot.base))?;
        let window = aml::Memory32Fixed::new(true, base, VIRTIO_MMIO_SLOT_SIZE as u32);
        let irq = edge_interrupt(slot.irq);
        let crs = aml::ResourceTemplate::new(vec![&window, &irq]);
        let uid = index as u32;
        aml::Device::new(
            format!("V{index:03}").as_str().into(),
            vec![
                &aml::Name::new("_HID".into(), &"LNRO0005"),
                &aml::Name::new("_UID".into(), &uid),
                &aml::Name::new("_CRS".into(), &crs),
            ],
        )
        .to_aml_bytes(&mut devices);
    }

    let mut body = Vec::new();
    // SLP_TYPa, SLP_TYPb, two reserved.
    let s5 = aml::Package::new(vec![&SLP_TYP_S5, &SLP_TYP_S5, &aml::ZERO, &aml::ZERO]);
    aml::Name::new("_S5_".into(), &s5).to_aml_bytes(&mut body);
    body.extend(aml::Scope::raw("\\_SB_".into(), devices));
    let mut table = Sdt::new(
        *b"DSDT",
        36,
        DSDT_REVISION,
        OEM_ID,
        OEM_TABLE_ID,
        OEM_REVISION,
    );
    table.append_slice(&body);
    Ok(table.as_slice().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{EBDA_START, VIRTIO_MMIO_START};
    use crate::memory::create_guest_memory;
    use crate::virtio_devices::VIRTIO_IRQS;
    use crate::x86_64::boot_params::{e820_map, E820Entry, E820_RESERVED};
    use crate::x86_64::mptable;
    use corral_devices::bus::BusDevice;
    use corral_devices::power::{PowerEvent, PowerEventSink, PowerRegisters};
    use std::sync::{Arc, Mutex};

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], at: usize) -> u64 {
        u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    /// The table at `addr` in `image`, checked for signature and checksum.
    fn table<'a>(image: &'a [u8], addr: u64, signature: &[u8; 4]) -> &'a [u8] {
        let at = (addr - ACPI_START) as usize;
        assert_eq!(&image[at..at + 4], signature, "at {addr:#x}");
        let t = &image[at..at + u32_at(image, at + 4) as usize];
        assert_eq!(sum(t), 0, "{} checksum", String::from_utf8_lossy(signature));
        t
    }

    /// Follows RSDP → XSDT → FADT, MADT and FADT → DSDT, checking every link
    /// and checksum; returns (XSDT, FADT, MADT, DSDT).
    fn walk(image: &[u8]) -> [&[u8]; 4] {
        let rsdp = &image[..36];
        assert_eq!(
            (&rsdp[..8], rsdp[15], u32_at(rsdp, 20)),
            (&b"RSD PTR "[..], 2, 36)
        );
        assert_eq!((sum(&rsdp[..20]), sum(rsdp)), (0, 0), "RSDP checksums");
        let xsdt = table(image, u64_at(rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 2 * 8);
        let fadt = table(image, u64_at(xsdt, 36), b"FACP");
        let madt = table(image, u64_at(xsdt, 44), b"APIC");
        assert_eq!(u32_at(fadt, 40), 0, "32-bit DSDT pointer unused");
        [xsdt, fadt, madt, table(image, u64_at(fadt, 140), b"DSDT")]
    }

    fn slots(n: usize) -> Vec<Slot> {
        (0..n)
            .map(|i| Slot {
                base: VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SLOT_SIZE,
                irq: VIRTIO_IRQS[i],
            })
            .collect()
    }

    #[test]
    fn checksums_and_pointers_are_consistent() {
        for (vcpus, devices) in [(1, 0), (2, 3), (MAX_MPTABLE_VCPUS, VIRTIO_IRQS.len())] {
            let image = build(vcpus, &slots(devices)).unwrap();
            let [xsdt, fadt, ..] = walk(&image);
            assert_eq!((fadt.len(), fadt[8], fadt[131]), (276, 6, 5), "FADT 6.5");
            assert_eq!(&fadt[10..24], &xsdt[10..24], "FADT and XSDT OEM IDs");
            assert!(ACPI_START + image.len() as u64 <= ACPI_END);
        }
    }

    #[test]
    fn madt_has_a_local_apic_per_vcpu_and_the_mptable_ioapic() {
        for vcpus in [1, 4, MAX_MPTABLE_VCPUS] {
            let image = build(vcpus, &[]).unwrap();
            let [_, _, madt, _] = walk(&image);
            assert_eq!(u32_at(madt, 36), APIC_START as u32);
            let (mut apic_ids, mut others) = (Vec::new(), Vec::new());
            let mut at = 44;
            while at < madt.len() {
                let e = &madt[at..at + madt[at + 1] as usize];
                match e[0] {
                    // Processor UID = APIC ID, enabled.
                    0 if e.len() == 8 && e[2] == e[3] && u32_at(e, 4) == 1 => {
                        apic_ids.push(u32::from(e[3]))
                    }
                    _ => others.push(e.to_vec()),
                }
                at += e.len();
            }
            assert_eq!(at, madt.len());
            // As CPUID (vCPU i has APIC ID i) and the MP table have them.
            assert_eq!(apic_ids, (0..vcpus).collect::<Vec<_>>());
            let ioapic = [
                &[1, 12, vcpus as u8, 0][..],
                &(IOAPIC_START as u32).to_le_bytes(),
                &[0; 4],
            ];
            // I/O APIC with ID = vCPU count at GSI 0; NMI on LINT1 everywhere.
            assert_eq!(others, vec![ioapic.concat(), vec![4, 6, 0xff, 0, 0, 1]]);
        }
    }

    #[test]
    fn fadt_points_at_the_power_registers() {
        let image = build(2, &[]).unwrap();
        let [_, fadt, _, _] = walk(&image);
        let flags = u32_at(fadt, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        // Generic addresses: system memory, 8 bits at bit 0, byte access.
        let gas = |at: usize| (&fadt[at..at + 4], u64_at(fadt, at + 4));
        let mmio_byte = |offset| (&[0, 8, 0, 1][..], POWER_REGISTERS_START + offset);
        assert_eq!(gas(116), mmio_byte(RESET), "RESET_REG");
        assert_eq!(fadt[128], RESET_VALUE);
        assert_eq!(gas(244), mmio_byte(SLEEP_CONTROL), "SLEEP_CONTROL_REG");
        assert_eq!(gas(256), mmio_byte(SLEEP_STATUS), "SLEEP_STATUS_REG");
        assert_eq!(&fadt[268..276], b"CORRALVM");
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<PowerEvent>>);
    impl PowerEventSink for Log {
        fn power_event(&self, event: PowerEvent) {
            self.0.lock().unwrap().push(event);
        }
    }

    #[test]
    fn what_linux_writes_reaches_the_power_block() {
        let image = build(1, &[]).unwrap();
        let [_, fadt, _, dsdt] = walk(&image);
        // Name (_S5_, Package (4) { 5, 5, Zero, Zero }).
        let s5: &[u8] = &[
            8, b'_', b'S', b'5', b'_', 0x12, 8, 4, 0x0a, 5, 0x0a, 5, 0, 0,
        ];
        assert!(dsdt.windows(s5.len()).any(|w| w == s5), "no \\_S5_");
        // ACPICA's hardware-reduced sleep writes SLP_TYP << 2 | SLP_EN (bit 5).
        let sleep_control = (SLP_TYP_S5 << 2) | (1 << 5);
        let log = Arc::new(Log::default());
        let mut regs = PowerRegisters::new(log.clone());
        regs.write(u64_at(fadt, 248) - POWER_REGISTERS_START, &[sleep_control]);
        regs.write(u64_at(fadt, 120) - POWER_REGISTERS_START, &[fadt[128]]);
        let events = log.0.lock().unwrap().clone();
        assert_eq!(events, vec![PowerEvent::PowerOff, PowerEvent::Reset]);
    }

    #[test]
    fn dsdt_describes_com1_and_every_virtio_slot() {
        let devices = slots(VIRTIO_IRQS.len());
        let image = build(1, &devices).unwrap();
        let [.., dsdt] = walk(&image);
        let has = |needle: &[u8]| dsdt.windows(needle.len()).any(|w| w == needle);
        // Extended IRQ descriptor: consumer, edge, active high, exclusive.
        let irq = |gsi: u32| [&[0x89, 6, 0, 0b11, 1][..], &gsi.to_le_bytes()].concat();
        assert!(has(b"COM1") && has(&irq(SERIAL_IRQ)));
        assert!(has(&[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8]), "COM1 ports");
        assert!(has(b"LNRO0005\0"));
        for (i, slot) in devices.iter().enumerate() {
            let base = (slot.base as u32).to_le_bytes();
            let window = [&[0x86, 9, 0, 1][..], &base, &[0, 0x10, 0, 0]].concat();
            assert!(has(format!("V{i:03}").as_bytes()) && has(&window) && has(&irq(slot.irq)));
        }
    }

    #[test]
    fn tables_clear_the_mptable_and_are_reserved_in_e820() {
        // Where Linux scans for the RSDP, on a 16-byte boundary.
        assert!((0xe_0000..0x10_0000).contains(&ACPI_START) && ACPI_START.is_multiple_of(16));
        let image = build(MAX_MPTABLE_VCPUS, &slots(VIRTIO_IRQS.len())).unwrap();
        let end = ACPI_START + image.len() as u64;
        let mptable = mptable::build(MAX_MPTABLE_VCPUS, EBDA_START).unwrap();
        assert!(EBDA_START + mptable.len() as u64 <= ACPI_START);
        for mem in [128 << 20, 5 << 30] {
            let map = e820_map(mem);
            let covers = |e: &E820Entry| {
                e.kind == E820_RESERVED && e.addr <= ACPI_START && end <= e.addr + e.size
            };
            assert!(map.iter().any(covers), "{map:x?}");
        }
    }

    #[test]
    fn writes_the_rsdp_and_refuses_what_it_cannot_describe() {
        let mem = create_guest_memory(16 << 20).unwrap();
        let rsdp = setup_acpi(&mem, 2, &slots(2)).unwrap();
        let mut signature = [0; 8];
        mem.read_slice(&mut signature, GuestAddress(rsdp)).unwrap();
        assert_eq!(&signature, b"RSD PTR ");
        assert!(matches!(build(0, &[]), Err(AcpiError::VcpuCount(0))));
        assert!(matches!(build(255, &[]), Err(AcpiError::VcpuCount(255))));
        let high = [Slot {
            base: 1 << 32,
            irq: 5,
        }];
        assert!(matches!(build(1, &high), Err(AcpiError::MmioAbove4GiB(_))));
    }
}
