//! The shim's configuration: built-in defaults that work without a file,
//! overridden by a TOML file named by the runtime options' `ConfigPath`
//! (CRI: `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.corral.options]
//! ConfigPath = "…"`; `ctr run --runtime-config-path …`), else by
//! `$CORRAL_SHIM_CONFIG`, else `/etc/corral/shim.toml` when it exists.
//!
//! Without `kernel`/`initrd`, the shim uses an installed guest
//! (`/usr/share/corral/{vmlinux,initramfs.cpio}`) or the newest outputs of
//! `guest-kernel/build.sh` and `rootfs/build.sh` in Corral's build cache.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::cgroup::PlacementMode;

/// Where an installed guest lives.
pub const INSTALL_DIR: &str = "/usr/share/corral";
/// The configuration file read when nothing names another.
pub const DEFAULT_CONFIG: &str = "/etc/corral/shim.toml";
/// Environment variable naming the configuration file.
pub const CONFIG_ENV: &str = "CORRAL_SHIM_CONFIG";

/// Why the configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ShimConfigError {
    /// The file cannot be read.
    #[error("cannot read the shim configuration {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid.
    #[error("shim configuration {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, as the TOML parser says it (one line).
        message: String,
    },
    /// No guest kernel or initramfs was found.
    #[error("no guest {what} found: set `{key}` in the shim configuration ({DEFAULT_CONFIG}), install one as {INSTALL_DIR}/{file}, or build it with {script}")]
    NoGuest {
        /// "kernel" or "initramfs".
        what: &'static str,
        /// The configuration key.
        key: &'static str,
        /// The file name under [`INSTALL_DIR`].
        file: &'static str,
        /// The build script.
        script: &'static str,
    },
    /// A value is out of range.
    #[error("shim configuration: {0}")]
    Invalid(String),
}

/// How the pod's threads are placed (TOML `cgroup_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum CgroupMode {
    /// vCPUs in the pod's cgroup, every other thread in the overhead sibling.
    #[default]
    Split,
    /// The whole shim in the pod's cgroup.
    SandboxOnly,
    /// No placement: the shim stays where containerd started it.
    None,
}

impl CgroupMode {
    /// The placement mode, when there is placement.
    pub fn placement(self) -> Option<PlacementMode> {
        match self {
            CgroupMode::Split => Some(PlacementMode::Split),
            CgroupMode::SandboxOnly => Some(PlacementMode::SandboxOnly),
            CgroupMode::None => None,
        }
    }
}

/// The file's contents; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    vcpus: Option<u32>,
    memory_mib: Option<u64>,
    cgroup_mode: Option<CgroupMode>,
    log_level: Option<String>,
    kernel_params: Option<String>,
    spare_disks: Option<u32>,
    disk_size_mib: Option<u64>,
    state_dir: Option<PathBuf>,
    console_log: Option<bool>,
    seccomp: Option<String>,
}

/// The shim's resolved configuration.
#[derive(Debug, Clone)]
pub struct ShimConfig {
    /// Guest kernel (vmlinux or bzImage).
    pub kernel: PathBuf,
    /// Initramfs with the agent.
    pub initrd: PathBuf,
    /// vCPUs before the containers' CPU limits are added.
    pub vcpus: u32,
    /// Guest memory (MiB) before the containers' memory limits are added.
    pub memory_mib: u64,
    /// Thread placement.
    pub cgroup_mode: CgroupMode,
    /// `tracing` filter for the shim's log.
    pub log_level: String,
    /// Appended to the guest kernel command line.
    pub kernel_params: String,
    /// Disks for containers of the pod (one per live container).
    pub spare_disks: u32,
    /// Size of each container disk (sparse file).
    pub disk_size_mib: u64,
    /// Sockets and container disks (`<state_dir>/<pod>`).
    pub state_dir: PathBuf,
    /// Keep the guest console in `<state_dir>/<pod>/console.log`.
    pub console_log: bool,
    /// Seccomp filters on the VM's threads (`seccomp = "on" | "log" |
    /// "off"`; the control plane's deny-list is always on).
    pub seccomp: corral_vmm::SeccompPolicy,
}

impl ShimConfig {
    /// The configuration named by `config_path` (the runtime options'), or
    /// by the environment, or the default file, or built-in defaults.
    pub fn load(config_path: Option<&Path>) -> Result<ShimConfig, ShimConfigError> {
        let env = std::env::var_os(CONFIG_ENV).map(PathBuf::from);
        let path = match (config_path, env) {
            (Some(p), _) => Some(p.to_path_buf()),
            (None, Some(p)) => Some(p),
            (None, None) => Some(PathBuf::from(DEFAULT_CONFIG)).filter(|p| p.exists()),
        };
        let file = match &path {
            Some(path) => {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ShimConfigError::Read {
                        path: path.clone(),
                        source,
                    })?;
                parse(path, &text)?
            }
            None => ConfigFile::default(),
        };
        resolve(file, &cache_dir())
    }
}

fn parse(path: &Path, text: &str) -> Result<ConfigFile, ShimConfigError> {
    toml::from_str(text).map_err(|e| ShimConfigError::Parse {
        path: path.to_path_buf(),
        message: e.message().replace('\n', " "),
    })
}

fn resolve(file: ConfigFile, cache: &Path) -> Result<ShimConfig, ShimConfigError> {
    let kernel = match file.kernel {
        Some(k) => k,
        None => default_guest(
            &[Path::new(INSTALL_DIR).join("vmlinux")],
            &cache.join("guest-kernel"),
            |d| d.starts_with("default-"),
            "vmlinux",
        )
        .ok_or(ShimConfigError::NoGuest {
            what: "kernel",
            key: "kernel",
            file: "vmlinux",
            script: "guest-kernel/build.sh",
        })?,
    };
    let initrd = match file.initrd {
        Some(i) => i,
        None => default_guest(
            &[Path::new(INSTALL_DIR).join("initramfs.cpio")],
            &cache.join("rootfs"),
            |_| true,
            "initramfs.cpio",
        )
        .ok_or(ShimConfigError::NoGuest {
            what: "initramfs",
            key: "initrd",
            file: "initramfs.cpio",
            script: "rootfs/build.sh",
        })?,
    };
    let config = ShimConfig {
        kernel,
        initrd,
        vcpus: file.vcpus.unwrap_or(1),
        memory_mib: file.memory_mib.unwrap_or(256),
        cgroup_mode: file.cgroup_mode.unwrap_or_default(),
        log_level: file.log_level.unwrap_or_else(|| "info".into()),
        kernel_params: file.kernel_params.unwrap_or_default(),
        spare_disks: file.spare_disks.unwrap_or(4),
        disk_size_mib: file.disk_size_mib.unwrap_or(1024),
        state_dir: file.state_dir.unwrap_or_else(|| "/run/corral".into()),
        console_log: file.console_log.unwrap_or(true),
        seccomp: match file.seccomp.as_deref() {
            None => corral_vmm::SeccompPolicy::Enforce,
            Some(s) => s.parse().map_err(ShimConfigError::Invalid)?,
        },
    };
    if config.vcpus == 0 {
        return Err(ShimConfigError::Invalid(
            "vcpus = 0: give at least 1".into(),
        ));
    }
    if config.spare_disks == 0 || config.spare_disks > 16 {
        return Err(ShimConfigError::Invalid(format!(
            "spare_disks = {}: give 1 to 16 (one per live container of a pod)",
            config.spare_disks
        )));
    }
    if config.disk_size_mib < 16 {
        return Err(ShimConfigError::Invalid(format!(
            "disk_size_mib = {}: give at least 16",
            config.disk_size_mib
        )));
    }
    Ok(config)
}

/// Corral's build cache (as the build scripts compute it).
fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CORRAL_CACHE_DIR") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"));
    base.join("corral")
}

/// The first installed file that exists, else the newest `<dir>/<sub>/<file>`
/// whose `sub` passes `pick`.
fn default_guest(
    installed: &[PathBuf],
    dir: &Path,
    pick: impl Fn(&str) -> bool,
    file: &str,
) -> Option<PathBuf> {
    if let Some(p) = installed.iter().find(|p| p.is_file()) {
        return Some(p.clone());
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| pick(&e.file_name().to_string_lossy()))
        .map(|e| e.path().join(file))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
}

/// The `ConfigPath` of containerd's runtime options (`runtimeoptions.v1.Options`
/// in an `Any`: type_url = 1, config_path = 2, config_body = 3). Decoded by
/// hand because that message is not among the protos containerd-shim ships;
/// other option types (runc's) carry no path and give `None`.
pub fn config_path_of_options(type_url: &str, value: &[u8]) -> Option<PathBuf> {
    if !type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut input = protobuf::CodedInputStream::from_bytes(value);
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 2 && wire == 2 {
            return input
                .read_string()
                .ok()
                .filter(|s| !s.is_empty())
                .map(PathBuf::from);
        }
        let skipped = match wire {
            0 => input.read_raw_varint64().map(drop),
            1 => input.read_raw_bytes(8).map(drop),
            2 => input.read_bytes().map(drop),
            5 => input.read_raw_bytes(4).map(drop),
            _ => return None,
        };
        skipped.ok()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_overrides_defaults_and_bad_values_are_named() {
        let f = parse(
            Path::new("x.toml"),
            "kernel = \"/k\"\ninitrd = \"/i\"\nvcpus = 2\ncgroup_mode = \"sandbox-only\"\n",
        )
        .unwrap();
        let c = resolve(f, Path::new("/nonexistent")).unwrap();
        assert_eq!(c.kernel, Path::new("/k"));
        assert_eq!(c.vcpus, 2);
        assert_eq!(c.cgroup_mode, CgroupMode::SandboxOnly);
        assert_eq!(c.memory_mib, 256);
        let err = parse(Path::new("x.toml"), "vcpu = 2\n").unwrap_err();
        assert!(err.to_string().contains("vcpu"), "{err}");
        let f = parse(
            Path::new("x.toml"),
            "kernel = \"/k\"\ninitrd = \"/i\"\nvcpus = 0",
        )
        .unwrap();
        let err = resolve(f, Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("vcpus = 0"), "{err}");
    }

    #[test]
    fn without_a_file_the_newest_build_outputs_are_used() {
        let dir = std::env::temp_dir().join(format!("corral-shim-cfg-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for (sub, file) in [
            ("guest-kernel/default-a", "vmlinux"),
            ("guest-kernel/pvm-ci-b", "vmlinux"),
            ("rootfs/k1", "initramfs.cpio"),
        ] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
            std::fs::write(dir.join(sub).join(file), b"x").unwrap();
        }
        let c = resolve(ConfigFile::default(), &dir);
        let _ = std::fs::remove_dir_all(&dir);
        let c = c.unwrap();
        assert!(c.kernel.ends_with("default-a/vmlinux"), "{c:?}");
        assert!(c.initrd.ends_with("k1/initramfs.cpio"), "{c:?}");
        let err = resolve(ConfigFile::default(), Path::new("/nonexistent")).unwrap_err();
        assert!(err.to_string().contains("no guest kernel"), "{err}");
    }

    #[test]
    fn the_config_path_is_read_from_runtime_options() {
        // type_url "x" (field 1), config_path "/etc/c.toml" (field 2).
        let mut v = vec![0x0a, 1, b'x', 0x12, 11];
        v.extend_from_slice(b"/etc/c.toml");
        assert_eq!(
            config_path_of_options("type.googleapis.com/runtimeoptions.v1.Options", &v),
            Some(PathBuf::from("/etc/c.toml"))
        );
        assert_eq!(
            config_path_of_options("containerd.runc.v1.Options", &v),
            None
        );
        assert_eq!(
            config_path_of_options("runtimeoptions.v1.Options", &[0x12, 200]),
            None
        );
    }
}
