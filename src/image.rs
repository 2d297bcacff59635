//! `corral run --image PATH [-- CMD…]`: an OCI image layout directory, or an
//! OCI / `docker save` archive, becomes the container's root filesystem (a
//! squashfs disk built in-process and cached by its layers' digests,
//! `corral_runtime::image`), and the image's config says what runs: its
//! entrypoint and CMD (the command after `--` replaces CMD, as with
//! `docker run`), environment, working directory and user, each of which
//! the command line can override.

use std::path::PathBuf;

use anyhow::{bail, Context};
use corral_runtime::image::{self, ResolvedUser};

use crate::container::ContainerInput;

/// The image options of `corral run`.
#[derive(clap::Args, Debug)]
pub struct ImageArgs {
    /// Run the container of an OCI image: an image layout directory, or an
    /// OCI or `docker save` archive (.tar). Its layers become a read-only
    /// squashfs disk, cached by digest, with a tmpfs upper in the guest.
    #[arg(long, value_name = "PATH", conflicts_with = "rootfs")]
    pub image: Option<PathBuf>,
    /// Where converted images are kept [default: $CORRAL_CACHE_DIR/images,
    /// else $XDG_CACHE_HOME/corral/images, else ~/.cache/corral/images].
    #[arg(long, value_name = "DIR", requires = "image")]
    pub image_cache: Option<PathBuf>,
    /// The container process's working directory [default: the image's,
    /// else /].
    #[arg(short = 'w', long, value_name = "DIR", requires = "container")]
    pub workdir: Option<String>,
    /// Who the container's process runs as: uid[:gid], or with --image also
    /// name[:group] from the image's /etc/passwd [default: the image's user,
    /// else root].
    #[arg(short = 'u', long, value_name = "USER[:GROUP]", requires = "container")]
    pub user: Option<String>,
}

/// The image's cache directory.
fn cache_dir(args: &ImageArgs) -> anyhow::Result<PathBuf> {
    if let Some(dir) = &args.image_cache {
        return Ok(dir.clone());
    }
    let var = |name| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("CORRAL_CACHE_DIR") {
        return Ok(dir.join("images"));
    }
    if let Some(dir) = var("XDG_CACHE_HOME") {
        return Ok(dir.join("corral/images"));
    }
    match var("HOME") {
        Some(home) => Ok(home.join(".cache/corral/images")),
        None => bail!("no place for the image cache: set HOME or give --image-cache DIR"),
    }
}

/// Converts (or finds in the cache) the image and says what runs.
pub fn container_input(
    args: &ImageArgs,
    command: &[String],
    env: &[String],
) -> anyhow::Result<ContainerInput> {
    let Some(path) = &args.image else {
        bail!("no --image given");
    };
    let cache = cache_dir(args)?;
    let started = std::time::Instant::now();
    let prepared = image::prepare(path, &cache)?;
    tracing::info!(
        "image {}: disk {} ({}, {:?})",
        path.display(),
        prepared.disk.display(),
        if prepared.cached {
            "cached".to_string()
        } else {
            format!("{} bytes unpacked", prepared.bytes_unpacked)
        },
        started.elapsed()
    );
    let config = &prepared.config;
    let command = config.command(command)?;
    let mut all_env = config.env.clone();
    all_env.extend(env.iter().cloned());
    let user = args
        .user
        .as_deref()
        .or(config.user.as_deref())
        .unwrap_or("");
    let user = image::resolve_user(&prepared.disk, user)
        .with_context(|| format!("image {}", path.display()))?;
    Ok(ContainerInput {
        disk: prepared.disk.clone(),
        disk_read_only: true,
        command,
        env: all_env,
        cwd: args.workdir.clone().or_else(|| config.working_dir.clone()),
        user,
        volumes: Vec::new(),
    })
}

/// `--user` for a disk that is not an image: numbers only.
pub fn numeric_user(user: Option<&str>) -> anyhow::Result<ResolvedUser> {
    let Some(user) = user.filter(|u| !u.is_empty()) else {
        return Ok(ResolvedUser::default());
    };
    let (u, g) = user.split_once(':').unwrap_or((user, "0"));
    match (u.parse(), g.parse()) {
        (Ok(uid), Ok(gid)) => Ok(ResolvedUser {
            uid,
            gid,
            additional_gids: Vec::new(),
        }),
        _ => bail!("--user {user:?}: with --rootfs give numbers (uid[:gid]); names need --image"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_users_parse_and_names_are_refused() {
        assert_eq!(numeric_user(None).ok(), Some(ResolvedUser::default()));
        let u = numeric_user(Some("5:6")).ok();
        assert_eq!(u.map(|u| (u.uid, u.gid)), Some((5, 6)));
        let u = numeric_user(Some("7")).ok();
        assert_eq!(u.map(|u| (u.uid, u.gid)), Some((7, 0)));
        let e = numeric_user(Some("www")).err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("\"www\"")));
    }
}
