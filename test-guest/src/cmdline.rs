//! The guest's command line: space-separated `key=value` words.
//!
//! | key          | value                         | default (Corral's layout) |
//! |--------------|-------------------------------|---------------------------|
//! | `workload`   | `spin`, `boot`, `hang`, `flood` | `spin`                  |
//! | `iterations` | loop count per vCPU for spin  | 10000000                  |
//! | `uart`       | MMIO 16550 address, or `none` | 0xd0001000                |
//! | `poweroff`   | ACPI sleep-control address    | 0xd0002000                |
//! | `boot_timer` | boot-timer address, or `none` | 0xd0000000                |
//! | `cpus`       | vCPUs to expect without an MP table | 1                   |
//! | `r0`         | `reset` / `triplefault`, first word only (ring 0) | –     |
//!
//! Unknown words (a Linux-style `console=ttyS0`, say) are ignored.

/// What to run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Spin `iterations` times on every vCPU, report, power off.
    Spin,
    /// Signal the boot timer and power off at once.
    Boot,
    /// Spin on every vCPU forever (until the host stops the VM).
    Hang,
    /// Print numbered lines on the console forever.
    Flood,
}

/// The parsed command line.
pub struct Config {
    pub workload: Workload,
    pub iterations: u64,
    pub uart: Option<u64>,
    pub poweroff: Option<u64>,
    pub boot_timer: Option<u64>,
    pub cpus: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workload: Workload::Spin,
            iterations: 10_000_000,
            uart: Some(0xd000_1000),
            poweroff: Some(0xd000_2000),
            boot_timer: Some(0xd000_0000),
            cpus: 1,
        }
    }
}

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn address(s: &str) -> Option<Option<u64>> {
    if s == "none" {
        Some(None)
    } else {
        number(s).map(Some)
    }
}

impl Config {
    /// Parses `cmdline`; words it cannot parse are returned in `bad` order.
    pub fn parse<'a>(cmdline: &'a str, mut bad: impl FnMut(&'a str)) -> Self {
        let mut c = Config::default();
        for word in cmdline.split(' ').filter(|w| !w.is_empty()) {
            let Some((key, value)) = word.split_once('=') else {
                continue;
            };
            let ok = match key {
                "workload" => match value {
                    "spin" => Some(Workload::Spin),
                    "boot" => Some(Workload::Boot),
                    "hang" => Some(Workload::Hang),
                    "flood" => Some(Workload::Flood),
                    _ => None,
                }
                .map(|w| c.workload = w),
                "iterations" => number(value).map(|n| c.iterations = n),
                "uart" => address(value).map(|a| c.uart = a),
                "poweroff" => address(value).map(|a| c.poweroff = a),
                "boot_timer" => address(value).map(|a| c.boot_timer = a),
                "cpus" => number(value).map(|n| c.cpus = n.clamp(1, 255) as u32),
                _ => Some(()),
            };
            if ok.is_none() {
                bad(word);
            }
        }
        c
    }
}
