//! Pure translation of OCI spec words into system-call arguments: mount
//! options into flags, propagation and data; rlimit names into resources.

use nix::mount::MsFlags;
use nix::sys::resource::Resource;
use oci_spec::runtime::PosixRlimitType;

/// An OCI mount's `options`, split.
#[derive(Debug, PartialEq)]
pub struct MountOptions {
    /// Flags for mount(2) (and for the remount of a bind mount).
    pub flags: MsFlags,
    /// A propagation change applied after mounting.
    pub propagation: MsFlags,
    /// `bind` or `rbind`.
    pub bind: bool,
    /// `rbind`.
    pub recursive: bool,
    /// Everything else, for the filesystem (`mode=755,size=65536k`).
    pub data: String,
}

impl MountOptions {
    /// Splits `options`.
    pub fn parse(options: &[String]) -> Self {
        let mut out = MountOptions {
            flags: MsFlags::empty(),
            propagation: MsFlags::empty(),
            bind: false,
            recursive: false,
            data: String::new(),
        };
        let mut data = Vec::new();
        for o in options {
            let flag = match o.as_str() {
                "ro" => MsFlags::MS_RDONLY,
                "nosuid" => MsFlags::MS_NOSUID,
                "nodev" => MsFlags::MS_NODEV,
                "noexec" => MsFlags::MS_NOEXEC,
                "sync" => MsFlags::MS_SYNCHRONOUS,
                "dirsync" => MsFlags::MS_DIRSYNC,
                "noatime" => MsFlags::MS_NOATIME,
                "nodiratime" => MsFlags::MS_NODIRATIME,
                "relatime" => MsFlags::MS_RELATIME,
                "strictatime" => MsFlags::MS_STRICTATIME,
                "rw" | "suid" | "dev" | "exec" | "atime" | "diratime" | "async" => MsFlags::empty(),
                "bind" => {
                    out.bind = true;
                    MsFlags::empty()
                }
                "rbind" => {
                    out.bind = true;
                    out.recursive = true;
                    MsFlags::empty()
                }
                "private" | "rprivate" | "shared" | "rshared" | "slave" | "rslave"
                | "unbindable" | "runbindable" => {
                    out.propagation = propagation(o);
                    MsFlags::empty()
                }
                _ => {
                    data.push(o.as_str());
                    MsFlags::empty()
                }
            };
            out.flags |= flag;
        }
        out.data = data.join(",");
        out
    }
}

fn propagation(word: &str) -> MsFlags {
    let rec = if word.starts_with('r') {
        MsFlags::MS_REC
    } else {
        MsFlags::empty()
    };
    let kind = match word.trim_start_matches('r') {
        "private" => MsFlags::MS_PRIVATE,
        "shared" => MsFlags::MS_SHARED,
        "slave" => MsFlags::MS_SLAVE,
        _ => MsFlags::MS_UNBINDABLE,
    };
    kind | rec
}

/// The resource of an OCI rlimit type.
pub fn rlimit_resource(typ: PosixRlimitType) -> Resource {
    use PosixRlimitType as T;
    match typ {
        T::RlimitCpu => Resource::RLIMIT_CPU,
        T::RlimitFsize => Resource::RLIMIT_FSIZE,
        T::RlimitData => Resource::RLIMIT_DATA,
        T::RlimitStack => Resource::RLIMIT_STACK,
        T::RlimitCore => Resource::RLIMIT_CORE,
        T::RlimitRss => Resource::RLIMIT_RSS,
        T::RlimitNproc => Resource::RLIMIT_NPROC,
        T::RlimitNofile => Resource::RLIMIT_NOFILE,
        T::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        T::RlimitAs => Resource::RLIMIT_AS,
        T::RlimitLocks => Resource::RLIMIT_LOCKS,
        T::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        T::RlimitNice => Resource::RLIMIT_NICE,
        T::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        T::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_data_and_propagation_are_split() {
        let o = MountOptions::parse(&words(&[
            "nosuid",
            "strictatime",
            "mode=755",
            "size=65536k",
        ]));
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(!o.bind);
        let o = MountOptions::parse(&words(&["rbind", "ro", "rprivate"]));
        assert!(o.bind && o.recursive);
        assert_eq!(o.flags, MsFlags::MS_RDONLY);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        let o = MountOptions::parse(&words(&["newinstance", "ptmxmode=0666", "rw"]));
        assert_eq!(o.flags, MsFlags::empty());
        assert_eq!(o.data, "newinstance,ptmxmode=0666");
    }
}
