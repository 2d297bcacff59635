//! Which kernel and initramfs `corral run` boots: the files given with
//! `--kernel`/`--initrd`, else the guest embedded in this executable (the
//! `embedded-guest` feature: `guest-kernel/`'s bzImage and `rootfs/`'s
//! initramfs with the agent, put in by `build.rs`).
//!
//! The embedded bytes are `include_bytes!` data: they live in the
//! executable's read-only mapping and are copied from there straight into
//! guest memory, never to disk.

use std::path::PathBuf;

use anyhow::bail;
use corral_vmm::BootFile;

#[cfg(feature = "embedded-guest")]
static KERNEL: &[u8] = include_bytes!(env!("CORRAL_EMBEDDED_KERNEL"));
#[cfg(feature = "embedded-guest")]
static INITRD: &[u8] = include_bytes!(env!("CORRAL_EMBEDDED_INITRD"));

/// The embedded kernel and initramfs, when this build has them.
pub fn embedded() -> Option<(BootFile, BootFile)> {
    #[cfg(feature = "embedded-guest")]
    {
        Some((
            BootFile::Embedded {
                name: "embedded bzImage",
                bytes: KERNEL,
            },
            BootFile::Embedded {
                name: "embedded initramfs",
                bytes: INITRD,
            },
        ))
    }
    #[cfg(not(feature = "embedded-guest"))]
    {
        None
    }
}

/// Picks the kernel and initrd: each file given wins; the embedded guest
/// fills in the rest. The embedded initramfs is added to a kernel given on
/// the command line only to run a container, which needs its agent.
pub fn choose(
    kernel: Option<PathBuf>,
    initrd: Option<PathBuf>,
    container: bool,
) -> anyhow::Result<(BootFile, Option<BootFile>)> {
    let embedded = embedded();
    let given_kernel = kernel.is_some();
    let kernel = match (kernel, &embedded) {
        (Some(path), _) => BootFile::Path(path),
        (None, Some((k, _))) => k.clone(),
        (None, None) => bail!(
            "no guest kernel: give --kernel PATH (this corral has no embedded guest; \
             scripts/build-edge builds one that has)"
        ),
    };
    let initrd = match (initrd, embedded) {
        (Some(path), _) => Some(BootFile::Path(path)),
        (None, Some((_, i))) if container || !given_kernel => Some(i),
        (None, _) => None,
    };
    Ok((kernel, initrd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_files_win() {
        let (k, i) = choose(Some("/k".into()), Some("/i".into()), true).unwrap();
        assert_eq!(k, BootFile::Path("/k".into()));
        assert_eq!(i, Some(BootFile::Path("/i".into())));
    }

    #[cfg(not(feature = "embedded-guest"))]
    #[test]
    fn without_an_embedded_guest_a_kernel_is_required() {
        let e = choose(None, None, false).unwrap_err();
        assert!(e.to_string().contains("give --kernel PATH"), "{e}");
        let (_, i) = choose(Some("/k".into()), None, true).unwrap();
        assert_eq!(i, None);
    }

    #[cfg(feature = "embedded-guest")]
    #[test]
    fn the_embedded_guest_fills_in() {
        let (k, i) = choose(None, None, false).unwrap();
        assert!(matches!(k, BootFile::Embedded { bytes, .. } if bytes.len() > 1 << 20));
        assert!(matches!(i, Some(BootFile::Embedded { .. })));
        let (_, i) = choose(Some("/k".into()), None, false).unwrap();
        assert_eq!(i, None);
        let (_, i) = choose(Some("/k".into()), None, true).unwrap();
        assert!(matches!(i, Some(BootFile::Embedded { .. })));
    }
}
