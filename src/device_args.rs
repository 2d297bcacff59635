//! Parsing of `--disk`, `--net`, `--vsock` and `--volume`; every error
//! names the bad value and what was expected.

use std::path::PathBuf;

use corral_vmm::{DiskCache, DiskConfig, NetConfig, VsockConfig};

/// A container volume: a disk image file on the host, mounted in the
/// container at `guest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeArg {
    /// The disk image (ext4, squashfs or erofs).
    pub host: PathBuf,
    /// Absolute path in the container.
    pub guest: String,
    /// Attached and mounted read-only.
    pub read_only: bool,
}

/// `HOST:GUEST[:ro|:rw]`.
pub fn parse_volume(arg: &str) -> Result<VolumeArg, String> {
    let bad = || format!("--volume {arg:?}: expected HOST_DISK_IMAGE:/GUEST/PATH[:ro]");
    let mut parts = arg.split(':');
    let (Some(host), Some(guest)) = (parts.next(), parts.next()) else {
        return Err(bad());
    };
    let read_only = match parts.next() {
        None | Some("rw") => false,
        Some("ro") => true,
        Some(other) => {
            return Err(format!(
                "--volume {arg:?}: option {other:?} is not ro or rw"
            ))
        }
    };
    if host.is_empty() || parts.next().is_some() {
        return Err(bad());
    }
    if guest.trim_end_matches('/').is_empty() {
        return Err(format!(
            "--volume {arg:?}: a volume cannot be mounted over the container's root"
        ));
    }
    if !guest.starts_with('/') || guest.split('/').any(|c| c == "..") {
        return Err(format!(
            "--volume {arg:?}: the container path {guest:?} must be absolute, without \"..\""
        ));
    }
    Ok(VolumeArg {
        host: PathBuf::from(host),
        guest: guest.to_string(),
        read_only,
    })
}

/// `PATH[,ro][,serial=SERIAL][,cache=writeback|unsafe]`.
pub fn parse_disk(arg: &str) -> Result<DiskConfig, String> {
    let mut parts = arg.split(',');
    let path = parts.next().filter(|p| !p.is_empty()).ok_or_else(|| {
        format!("--disk {arg:?}: expected PATH[,ro][,serial=SERIAL][,cache=writeback|unsafe]")
    })?;
    let mut disk = DiskConfig {
        path: PathBuf::from(path),
        read_only: false,
        serial: None,
        cache: DiskCache::Writeback,
    };
    for opt in parts {
        match opt.split_once('=') {
            None if opt == "ro" => disk.read_only = true,
            None if opt == "rw" => disk.read_only = false,
            Some(("serial", s)) if s.len() <= 20 => disk.serial = Some(s.to_string()),
            Some(("cache", "writeback")) => disk.cache = DiskCache::Writeback,
            Some(("cache", "unsafe")) => disk.cache = DiskCache::Unsafe,
            Some(("cache", c)) => {
                return Err(format!(
                    "--disk {arg:?}: cache {c:?} is not writeback or unsafe"
                ))
            }
            Some(("serial", s)) => {
                return Err(format!(
                    "--disk {arg:?}: serial {s:?} is longer than 20 bytes"
                ))
            }
            _ => {
                return Err(format!(
                    "--disk {arg:?}: unknown option {opt:?} (ro, rw, serial=…, cache=…)"
                ))
            }
        }
    }
    Ok(disk)
}

/// `TAP[,mac=MAC]`.
pub fn parse_net(arg: &str) -> Result<NetConfig, String> {
    let mut parts = arg.split(',');
    let tap = parts
        .next()
        .filter(|t| !t.is_empty() && t.len() < 16)
        .ok_or_else(|| {
            format!("--net {arg:?}: expected TAP[,mac=MAC] with a tap name of 1–15 bytes")
        })?;
    let mut net = NetConfig {
        tap: tap.to_string(),
        mac: None,
        netns: None,
    };
    for opt in parts {
        match opt.split_once('=') {
            Some(("mac", mac)) => {
                net.mac = Some(parse_mac(mac).ok_or_else(|| {
                    format!(
                        "--net {arg:?}: MAC {mac:?} is not six hex bytes like 02:00:00:00:00:01"
                    )
                })?)
            }
            _ => return Err(format!("--net {arg:?}: unknown option {opt:?} (mac=…)")),
        }
    }
    Ok(net)
}

fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let bytes: Vec<u8> = s
        .split(':')
        .map(|b| {
            (b.len() == 2)
                .then(|| u8::from_str_radix(b, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    bytes.try_into().ok()
}

/// `CID,UDS_PATH`.
pub fn parse_vsock(arg: &str) -> Result<VsockConfig, String> {
    let (cid, path) = arg
        .split_once(',')
        .ok_or_else(|| format!("--vsock {arg:?}: expected CID,UDS_PATH"))?;
    let cid: u32 = cid
        .parse()
        .map_err(|_| format!("--vsock {arg:?}: CID {cid:?} is not a number"))?;
    if cid <= 2 {
        return Err(format!(
            "--vsock {arg:?}: CID {cid} is reserved; use 3 or more"
        ));
    }
    if path.is_empty() {
        return Err(format!("--vsock {arg:?}: the socket path is empty"));
    }
    Ok(VsockConfig {
        cid,
        uds_path: PathBuf::from(path),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_names_bad_values() {
        let d = parse_disk("/tmp/d.img,ro,serial=abc").unwrap();
        assert!(d.read_only);
        assert_eq!(d.serial.as_deref(), Some("abc"));
        assert!(parse_disk(",ro").unwrap_err().contains("expected PATH"));
        assert!(parse_disk("/d,fast").unwrap_err().contains("\"fast\""));
        let n = parse_net("tap0,mac=02:00:00:00:00:0a").unwrap();
        assert_eq!(n.mac, Some([2, 0, 0, 0, 0, 10]));
        assert!(parse_net("tap0,mac=zz").unwrap_err().contains("\"zz\""));
        assert!(parse_net("a-very-long-tap-name").is_err());
        let v = parse_vsock("3,/tmp/v.sock").unwrap();
        assert_eq!(v.cid, 3);
        assert!(parse_vsock("2,/tmp/x").unwrap_err().contains("reserved"));
        assert!(parse_vsock("x,/tmp/x").unwrap_err().contains("\"x\""));
    }

    #[test]
    fn volumes_parse_and_bad_ones_are_named() {
        let v = parse_volume("/d.ext4:/data:ro").unwrap();
        assert_eq!(
            (v.host, v.guest.as_str(), v.read_only),
            (PathBuf::from("/d.ext4"), "/data", true)
        );
        assert!(!parse_volume("d.img:/x").unwrap().read_only);
        for bad in [
            "d.img",
            ":/x",
            "d.img:x",
            "d.img:/x:rx",
            "d.img:/a/../b",
            "a:/b:ro:c",
        ] {
            let e = parse_volume(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{e}");
        }
    }
}
