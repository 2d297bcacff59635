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
//! | `bench_mib`, `depth` | blk benchmark: MiB per pass, queue depth | 64, 16      |
//! | `host_ip`, `guest_ip` | net workloads' IPv4 addresses | 10.0.0.1, 10.0.0.2  |
//! | `frames`     | net benchmark frames per direction | 100000               |
//! | `stream_mib`, `streams` | vsock: MiB per stream, streams each way | 16, 2  |
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
    /// Exercise every virtio-blk device (pattern, flush, verify, GET_ID,
    /// read-only).
    Blk,
    /// Measure virtio-blk throughput.
    BlkBench,
    /// ARP and ICMP echo with the host through virtio-net.
    Net,
    /// Measure virtio-net frame rates.
    NetBench,
    /// vsock streams both ways, refused connections.
    Vsock,
    /// Measure vsock stream throughput.
    VsockBench,
}

impl Workload {
    /// Whether it drives virtio devices.
    pub fn uses_devices(self) -> bool {
        matches!(
            self,
            Workload::Blk
                | Workload::BlkBench
                | Workload::Net
                | Workload::NetBench
                | Workload::Vsock
                | Workload::VsockBench
        )
    }
}

/// The parsed command line.
pub struct Config {
    pub workload: Workload,
    pub iterations: u64,
    pub uart: Option<u64>,
    pub poweroff: Option<u64>,
    pub boot_timer: Option<u64>,
    pub cpus: u32,
    /// Block benchmark: MiB per pass; queue depth.
    pub bench_mib: u64,
    pub depth: u32,
    /// IPv4 addresses for the net workloads.
    pub host_ip: [u8; 4],
    pub guest_ip: [u8; 4],
    /// Frames for the net benchmark.
    pub frames: u64,
    /// vsock: stream size in MiB, streams each way.
    pub stream_mib: u64,
    pub streams: u32,
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
            bench_mib: 64,
            depth: 16,
            host_ip: [10, 0, 0, 1],
            guest_ip: [10, 0, 0, 2],
            frames: 100_000,
            stream_mib: 16,
            streams: 2,
        }
    }
}

fn number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn ipv4(s: &str) -> Option<[u8; 4]> {
    let mut out = [0u8; 4];
    let mut parts = s.split('.');
    for b in &mut out {
        *b = parts.next()?.parse().ok()?;
    }
    parts.next().is_none().then_some(out)
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
                    "blk" => Some(Workload::Blk),
                    "blkbench" => Some(Workload::BlkBench),
                    "net" => Some(Workload::Net),
                    "netbench" => Some(Workload::NetBench),
                    "vsock" => Some(Workload::Vsock),
                    "vsockbench" => Some(Workload::VsockBench),
                    _ => None,
                }
                .map(|w| c.workload = w),
                "iterations" => number(value).map(|n| c.iterations = n),
                "uart" => address(value).map(|a| c.uart = a),
                "poweroff" => address(value).map(|a| c.poweroff = a),
                "boot_timer" => address(value).map(|a| c.boot_timer = a),
                "cpus" => number(value).map(|n| c.cpus = n.clamp(1, 255) as u32),
                "bench_mib" => number(value).map(|n| c.bench_mib = n.clamp(1, 1 << 20)),
                "depth" => number(value).map(|n| c.depth = n.clamp(1, 64) as u32),
                "host_ip" => ipv4(value).map(|a| c.host_ip = a),
                "guest_ip" => ipv4(value).map(|a| c.guest_ip = a),
                "frames" => number(value).map(|n| c.frames = n),
                "stream_mib" => number(value).map(|n| c.stream_mib = n.clamp(1, 1 << 16)),
                "streams" => number(value).map(|n| c.streams = n.clamp(1, 8) as u32),
                _ => Some(()),
            };
            if ok.is_none() {
                bad(word);
            }
        }
        c
    }
}
