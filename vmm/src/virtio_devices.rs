//! Attaching virtio devices: each gets an MMIO slot and an IRQ, an irqfd
//! for its interrupt, an ioeventfd per queue on QueueNotify (so a guest
//! notification wakes the device's worker without leaving the kernel), a
//! worker thread of its own, and a `virtio_mmio.device=` entry on the
//! kernel command line so Linux (and the test guest) can find it; a Linux
//! with ACPI finds it in the DSDT instead (`x86_64::acpi`).
//!
//! Slot order is the configuration's: disks, then network interfaces, then
//! vsock.

use std::io;
use std::sync::{Arc, Mutex};

use corral_devices::bus::{Bus, BusError};
use corral_devices::virtio::block::{Block, BlockHandler, VirtioBlockError};
use corral_devices::virtio::net::{Net, NetHandler, VirtioNetError};
use corral_devices::virtio::vsock::{VirtioVsockError, Vsock, VsockHandler};
use corral_devices::virtio::{
    Interrupt, MmioTransport, VirtioDevice, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_SLOT_SIZE,
};
use kvm_ioctls::IoEventAddress;
use thiserror::Error;

use crate::config::VmConfig;
use crate::io_thread::{IoThread, Subscriber};
use crate::layout::VIRTIO_MMIO_START;
use crate::seccomp::{ThreadFilter, ThreadKind};
use crate::vm::Vm;

/// IRQs for virtio devices: the I/O APIC pins no legacy device uses here.
pub const VIRTIO_IRQS: [u32; 18] = [
    5, 6, 7, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
];

/// A device could not be attached.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// More devices than IRQs.
    #[error("{0} virtio devices requested; at most {max} are supported", max = VIRTIO_IRQS.len())]
    TooMany(usize),
    /// A disk could not be opened.
    #[error(transparent)]
    Block(#[from] VirtioBlockError),
    /// A network interface could not be opened.
    #[error(transparent)]
    Net(#[from] VirtioNetError),
    /// The vsock device could not be created.
    #[error(transparent)]
    Vsock(#[from] VirtioVsockError),
    /// An eventfd or thread could not be created.
    #[error("cannot set up virtio {what}")]
    Io {
        /// What.
        what: &'static str,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// KVM refused an irqfd or ioeventfd.
    #[error("KVM could not register the {what} of virtio device {slot}")]
    Kvm {
        /// What.
        what: &'static str,
        /// Slot.
        slot: usize,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Slots overlap (a bug).
    #[error("virtio slot layout")]
    Bus(#[from] BusError),
}

/// Where a device sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot {
    /// MMIO base.
    pub base: u64,
    /// IRQ.
    pub irq: u32,
}

/// The slots `config`'s devices get, in order.
pub fn slots(config: &VmConfig) -> Result<Vec<Slot>, DeviceError> {
    let count = config.disks.len() + config.nets.len() + usize::from(config.vsock.is_some());
    if count > VIRTIO_IRQS.len() {
        return Err(DeviceError::TooMany(count));
    }
    Ok((0..count)
        .map(|i| Slot {
            base: VIRTIO_MMIO_START + i as u64 * VIRTIO_MMIO_SLOT_SIZE,
            irq: VIRTIO_IRQS[i],
        })
        .collect())
}

/// The command-line entry announcing a device.
pub fn cmdline_entry(slot: Slot) -> String {
    format!(
        "virtio_mmio.device={}K@{:#x}:{}",
        VIRTIO_MMIO_SLOT_SIZE >> 10,
        slot.base,
        slot.irq
    )
}

/// An attached device as the VMM reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtioDeviceInfo {
    /// Name of its worker thread (`vmm-blk0`…).
    pub name: String,
    /// Where it sits.
    pub slot: Slot,
    /// The virtio device status register (DRIVER_OK = 4: a driver runs it).
    pub status: u32,
}

/// Attached devices: the workers and a handle on each transport.
pub(crate) struct AttachedDevices {
    pub(crate) workers: Vec<IoThread>,
    transports: Vec<(String, Slot, Arc<Mutex<MmioTransport>>)>,
}

impl AttachedDevices {
    pub(crate) fn info(&self) -> Vec<VirtioDeviceInfo> {
        self.transports
            .iter()
            .map(|(name, slot, t)| VirtioDeviceInfo {
                name: name.clone(),
                slot: *slot,
                status: corral_devices::bus::lock(t).status(),
            })
            .collect()
    }
}

/// A device ready to attach: the device, its worker's subscriber, a name.
struct Pending {
    device: Arc<Mutex<dyn VirtioDevice>>,
    handler: Subscriber,
    name: String,
    kind: ThreadKind,
    index: u32,
}

/// Opens every configured device's back end (files, taps, sockets).
fn open_devices(config: &VmConfig) -> Result<Vec<Pending>, DeviceError> {
    let mut out = Vec::new();
    for (i, disk) in config.disks.iter().enumerate() {
        let dev = Arc::new(Mutex::new(Block::new(disk)?));
        out.push(Pending {
            handler: Box::new(BlockHandler::new(dev.clone())),
            device: dev,
            name: format!("vmm-blk{i}"),
            kind: ThreadKind::Block,
            index: i as u32,
        });
    }
    for (i, net) in config.nets.iter().enumerate() {
        let dev = Arc::new(Mutex::new(Net::with_tap(net)?));
        out.push(Pending {
            handler: Box::new(NetHandler::new(dev.clone())),
            device: dev,
            name: format!("vmm-net{i}"),
            kind: ThreadKind::Net,
            index: i as u32,
        });
    }
    if let Some(vsock) = &config.vsock {
        let dev = Arc::new(Mutex::new(Vsock::new(vsock)?));
        out.push(Pending {
            handler: Box::new(VsockHandler::new(dev.clone())),
            device: dev,
            name: "vmm-vsock0".into(),
            kind: ThreadKind::Vsock,
            index: 0,
        });
    }
    Ok(out)
}

/// Opens, wires and starts every configured device.
pub(crate) fn attach(
    vm: &Vm,
    mmio: &mut Bus,
    config: &VmConfig,
    slots: &[Slot],
    exit: &Arc<crate::exit::ExitState>,
) -> Result<AttachedDevices, DeviceError> {
    let mut workers = Vec::new();
    let mut transports = Vec::new();
    for (index, (pending, slot)) in open_devices(config)?.into_iter().zip(slots).enumerate() {
        let irqfd = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)
            .map_err(|source| DeviceError::Io {
                what: "interrupt",
                source,
            })?;
        vm.fd()
            .register_irqfd(&irqfd, slot.irq)
            .map_err(|source| DeviceError::Kvm {
                what: "irqfd",
                slot: index,
                source,
            })?;
        let interrupt = Arc::new(Interrupt::new(irqfd));
        let transport = MmioTransport::new(pending.device, vm.memory().clone(), interrupt)
            .map_err(|source| DeviceError::Io {
                what: "queue notifications",
                source,
            })?;
        let notify = IoEventAddress::Mmio(slot.base + VIRTIO_MMIO_QUEUE_NOTIFY);
        for (queue, event) in (0u32..).zip(transport.queue_events()) {
            vm.fd()
                .register_ioevent(event, &notify, queue)
                .map_err(|source| DeviceError::Kvm {
                    what: "ioeventfd",
                    slot: index,
                    source,
                })?;
        }
        let transport = Arc::new(Mutex::new(transport));
        mmio.insert(transport.clone(), slot.base, VIRTIO_MMIO_SLOT_SIZE)?;
        transports.push((pending.name.clone(), *slot, transport));
        let worker = IoThread::spawn(
            &pending.name,
            vec![pending.handler],
            exit.clone(),
            Some(ThreadFilter::for_vm(
                pending.kind,
                pending.index,
                config.seccomp,
                exit,
            )),
        )
        .map_err(|source| DeviceError::Io {
            what: "worker thread",
            source,
        })?;
        workers.push(worker);
    }
    Ok(AttachedDevices {
        workers,
        transports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_devices::virtio::block::DiskConfig;

    #[test]
    fn slots_and_cmdline_entries() {
        let mut config = VmConfig::new("/k");
        assert!(slots(&config).unwrap().is_empty());
        config.disks = vec![
            DiskConfig {
                path: "/a".into(),
                read_only: false,
                serial: None,
                cache: Default::default(),
            };
            2
        ];
        let s = slots(&config).unwrap();
        assert_eq!(
            s[1],
            Slot {
                base: 0xd100_1000,
                irq: 6
            }
        );
        assert_eq!(cmdline_entry(s[0]), "virtio_mmio.device=4K@0xd1000000:5");
        config.disks = vec![config.disks[0].clone(); 19];
        assert!(matches!(slots(&config), Err(DeviceError::TooMany(19))));
    }
}
