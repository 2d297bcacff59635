//! Corral's test guest: a tiny freestanding x86-64 kernel booted through its
//! PVH note, used by the integration tests and boot benchmarks.
//!
//! Ring 0 is a few dozen assembly instructions ([`boot`]); everything else
//! runs in ring 3 with interrupts off and reaches devices by MMIO only (the
//! PVM hosts we test on emulate ring 0 slowly and fault on ring-3 port I/O).
//! It prints a banner on COM1, reads its command line ([`cmdline`]), finds
//! the vCPUs in the MP table, starts every AP with INIT/SIPI, runs the chosen
//! workload on every vCPU, reports per-vCPU results on the MMIO console and
//! in memory ([`results`]), and powers off ([`power`]).
//!
//! Console lines the host tests rely on:
//! - `corral-test-guest: booting` (ring 0, COM1)
//! - `smp: R of N vCPUs running guest code`
//! - `cpu S apic A: ran I iterations in C cycles` (one per vCPU)
//! - `result: ok, N vCPUs ran guest code` or `result: FAILED: ...`

#![no_std]
#![no_main]

#[macro_use]
mod console;
mod blk;
mod boot;
mod cmdline;
mod dma;
mod mem;
mod mmio;
mod mptable;
mod net;
mod power;
mod results;
mod smp;
mod start_info;
mod virtio;
mod vsock;

use core::sync::atomic::Ordering;

use cmdline::{Config, Workload};
use mptable::Cpus;
use results::{results, Results, MAGIC, RESULTS_ADDR, RESULTS_LEN};
use start_info::StartInfo;

/// Byte the boot timer expects.
const BOOT_COMPLETE_MAGIC: u8 = 123;
/// Longest command line we read.
const CMDLINE_MAX: usize = 2048;

/// Ring-3 entry of every vCPU (entered by `boot` with IRETQ).
#[no_mangle]
pub extern "C" fn guest_main(start_info: u64, slot: u64) -> ! {
    if slot == 0 {
        boot_cpu(start_info)
    } else {
        application_cpu(slot as usize)
    }
}

fn boot_cpu(start_info: u64) -> ! {
    let mut buf = [0u8; CMDLINE_MAX];
    let info = StartInfo::read(start_info);
    let len = info.as_ref().map_or(0, |i| i.copy_cmdline(&mut buf));
    let cmdline = core::str::from_utf8(&buf[..len]).unwrap_or("");
    let mut bad_word = None;
    let config = Config::parse(cmdline, |w| bad_word = bad_word.or(Some(w)));

    if config.workload == Workload::Boot {
        // The boot benchmark's path: nothing before the signal.
        if let Some(timer) = config.boot_timer {
            mmio::write::<u8>(timer, BOOT_COMPLETE_MAGIC);
        }
        power::power_off(config.poweroff);
    }

    let mut windows = [0u64; 16];
    let nwindows = virtio::windows(cmdline, &mut windows);
    let windows = &windows[..nwindows];
    match config.uart {
        Some(base) => console::use_uart(base),
        None => {
            for &w in windows {
                if console::use_virtio_console(w) {
                    break;
                }
            }
        }
    }
    say!("ring3: command line \"{cmdline}\"");
    if config.workload == Workload::Flood {
        for line in 0u64.. {
            say!("flood {line}: the quick brown fox jumps over the lazy dog");
        }
    }
    if let Some(word) = bad_word {
        say!("ring3: ignoring unparsable \"{word}\"");
    }
    let Some(info) = info else {
        fail(&config, "no PVH start info (bad magic)")
    };
    if !info.is_ram(RESULTS_ADDR, RESULTS_LEN) {
        fail(&config, "no RAM for the results block at 3 MiB")
    }
    let cpus = match mptable::cpus() {
        Some(cpus) => cpus,
        None => {
            say!("mptable: none found; expecting cpus={}", config.cpus);
            let mut cpus = Cpus {
                apic_ids: [0; 64],
                count: config.cpus.min(64) as usize,
            };
            for (i, id) in cpus.apic_ids.iter_mut().enumerate() {
                *id = i as u8;
            }
            cpus
        }
    };
    {
        use core::fmt::Write as _;
        let mut out = console::Console;
        let _ = write!(out, "mptable: {} vCPUs, APIC IDs", cpus.count);
        for id in &cpus.apic_ids[..cpus.count] {
            let _ = write!(out, " {id}");
        }
        let _ = writeln!(out);
    }

    let r = results();
    r.expected.store(cpus.count as u32, Ordering::SeqCst);
    r.iterations.store(config.iterations, Ordering::SeqCst);
    r.workload.store(config.workload as u32, Ordering::SeqCst);
    r.magic.store(MAGIC, Ordering::SeqCst);
    r.cpus[0].apic_id.store(smp::apic_id(), Ordering::SeqCst);

    let running = match smp::start_aps(&info, &cpus, r) {
        Ok(n) => n,
        Err(why) => fail(&config, why),
    };
    say!("smp: {running} of {} vCPUs running guest code", cpus.count);
    r.go.store(1, Ordering::SeqCst);

    // Device workloads run on the boot CPU; any other vCPU spins in ring 3
    // meanwhile (the cgroup proof benchmark relies on that).
    if config.workload.uses_devices() {
        if !info.is_ram(dma::DMA_BASE, dma::DMA_SIZE) {
            fail(&config, "no RAM for device buffers at 16-48 MiB")
        }
        let ok = match config.workload {
            Workload::Blk => blk::test(windows, &config),
            Workload::BlkBench => blk::bench(windows, &config),
            Workload::Net => net::test(windows, &config),
            Workload::NetBench => net::bench(windows, &config),
            Workload::Vsock => vsock::test(windows, &config),
            Workload::VsockBench => vsock::bench(windows, &config),
            _ => false,
        };
        if ok {
            say!("result: ok");
        } else {
            say!("result: FAILED");
        }
        say!("poweroff");
        power::power_off(config.poweroff)
    }

    if config.workload == Workload::Hang {
        say!("workload: hang, spinning on every vCPU until stopped");
        loop {
            core::hint::spin_loop();
        }
    }

    say!("workload: spin, {} iterations per vCPU", config.iterations);
    spin(r, 0, config.iterations);
    while r.done.load(Ordering::SeqCst) < running {
        core::hint::spin_loop();
    }
    for (slot, cpu) in r.cpus.iter().enumerate().take(running as usize) {
        say!(
            "cpu {slot} apic {}: ran {} iterations in {} cycles",
            cpu.apic_id.load(Ordering::SeqCst),
            cpu.iterations.load(Ordering::SeqCst),
            cpu.cycles.load(Ordering::SeqCst)
        );
    }
    if running as usize == cpus.count {
        r.status.store(1, Ordering::SeqCst);
        say!("result: ok, {running} vCPUs ran guest code");
    } else {
        r.status.store(2, Ordering::SeqCst);
        say!(
            "result: FAILED: only {running} of {} vCPUs started",
            cpus.count
        );
    }
    say!("poweroff");
    power::power_off(config.poweroff)
}

fn application_cpu(slot: usize) -> ! {
    let r = results();
    if let Some(me) = r.cpus.get(slot) {
        me.apic_id.store(smp::apic_id(), Ordering::SeqCst);
        r.arrived.fetch_add(1, Ordering::SeqCst);
        while r.go.load(Ordering::SeqCst) == 0 {
            core::hint::spin_loop();
        }
        if r.workload.load(Ordering::SeqCst) == Workload::Spin as u32 {
            spin(r, slot, r.iterations.load(Ordering::SeqCst));
        }
    }
    loop {
        core::hint::spin_loop();
    }
}

/// Counts down `iterations` in a `dec; jnz` loop and records the cycles.
fn spin(r: &Results, slot: usize, iterations: u64) {
    let start = smp::rdtsc();
    if iterations > 0 {
        // SAFETY: a register-only loop; no memory, stack or flags contract.
        unsafe {
            core::arch::asm!("2: dec {n}", "jnz 2b", n = inout(reg) iterations => _, options(nomem, nostack));
        }
    }
    let cycles = smp::rdtsc().wrapping_sub(start);
    let me = &r.cpus[slot];
    me.iterations.store(iterations, Ordering::SeqCst);
    me.cycles.store(cycles, Ordering::SeqCst);
    me.done.store(1, Ordering::SeqCst);
    r.done.fetch_add(1, Ordering::SeqCst);
}

fn fail(config: &Config, why: &str) -> ! {
    say!("result: FAILED: {why}");
    results().status.store(2, Ordering::SeqCst);
    power::power_off(config.poweroff)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    // A crash, not a power-off: the host must not mistake this for success.
    // SAFETY: deliberately raises #UD; with no IDT the VM ends.
    unsafe { core::arch::asm!("ud2", options(noreturn)) }
}
