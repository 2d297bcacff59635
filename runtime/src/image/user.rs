//! The image's `User` (or `--user`) as the uid, gid and supplementary
//! groups the container's process runs with, resolved the way Docker does:
//! names through the image's own `/etc/passwd` and `/etc/group` (read from
//! the squashfs disk, never the host's), a bare uid taking its group from
//! passwd when listed there, root when empty.
//!
//! Hand-written: the passwd/group line formats are a few lines, and the
//! crates that parse them go through the host's NSS, which is the wrong
//! database.

use std::io::Read;
use std::path::Path;

use super::ImageError;

/// Who the container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ResolvedUser {
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Supplementary groups (from the image's /etc/group).
    pub additional_gids: Vec<u32>,
}

/// Resolves `user` ("", "uid", "name", "uid:gid", "name:group", …) against
/// the squashfs `disk` of an image.
pub fn resolve_user(disk: &Path, user: &str) -> Result<ResolvedUser, ImageError> {
    if user.is_empty() {
        return Ok(ResolvedUser::default());
    }
    let passwd = read_image_file(disk, "/etc/passwd");
    let group = read_image_file(disk, "/etc/group");
    resolve_in(user, passwd.as_deref(), group.as_deref())
}

/// A small text file of the image, or None when absent or unreadable.
fn read_image_file(disk: &Path, path: &str) -> Option<String> {
    let file = std::fs::File::open(disk).ok()?;
    let fs = backhand::FilesystemReader::from_reader(std::io::BufReader::new(file)).ok()?;
    let node = fs.files().find(|n| n.fullpath == Path::new(path))?;
    let backhand::InnerNode::File(f) = &node.inner else {
        return None;
    };
    let mut text = String::new();
    fs.file(f)
        .reader()
        .take(1 << 20)
        .read_to_string(&mut text)
        .ok()?;
    Some(text)
}

/// Fields of the lines of a passwd or group file.
fn entries(text: Option<&str>) -> impl Iterator<Item = Vec<&str>> {
    text.unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 3)
}

fn resolve_in(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<ResolvedUser, ImageError> {
    let (name, grp) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let unknown = |what: &str| ImageError::UnknownUser {
        user: user.to_string(),
        what: what.to_string(),
    };
    // A name, or a number that passwd may list.
    // A number matches only a line with that uid (never a line whose uid
    // field does not parse, such as NIS's `+::::::`).
    let pw = entries(passwd).find(|f| {
        f[0] == name
            || name
                .parse::<u32>()
                .is_ok_and(|n| f[2].parse::<u32>().ok() == Some(n))
    });
    let (uid, login, pw_gid) = match (name.parse::<u32>(), &pw) {
        (Ok(uid), _) => (
            uid,
            pw.as_ref().map(|f| f[0]),
            pw.as_ref().and_then(|f| f.get(3)?.parse().ok()),
        ),
        (Err(_), Some(f)) => (
            f[2].parse()
                .map_err(|_| unknown("its uid in /etc/passwd"))?,
            Some(f[0]),
            f.get(3).and_then(|g| g.parse().ok()),
        ),
        (Err(_), None) => return Err(unknown("the user in the image's /etc/passwd")),
    };
    let gid = match grp {
        None => pw_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => entries(group)
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| unknown("the group in the image's /etc/group"))?,
        },
    };
    // Supplementary groups: the groups listing the login name (only when a
    // group was not forced, as Docker does).
    let mut additional_gids = Vec::new();
    if let (Some(login), None) = (login, grp) {
        for f in entries(group) {
            let listed = f.get(3).is_some_and(|m| m.split(',').any(|m| m == login));
            if let (true, Ok(g)) = (listed, f[2].parse::<u32>()) {
                if g != gid && !additional_gids.contains(&g) {
                    additional_gids.push(g);
                }
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\n# c\n+::::::\nbroken:x:\nwww:x:33:34:web:/var/www:/bin/false\n";
    const GROUP: &str = "root:x:0:\nwww:x:34:\nstaff:x:50:www,other\nweb:x:70:\n";

    fn r(user: &str) -> Result<ResolvedUser, ImageError> {
        resolve_in(user, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn names_and_numbers_resolve_like_docker() {
        assert_eq!(r("").unwrap_or_default(), ResolvedUser::default());
        let www = r("www").unwrap_or_default();
        assert_eq!((www.uid, www.gid, www.additional_gids), (33, 34, vec![50]));
        assert_eq!(r("33").map(|u| (u.uid, u.gid)).ok(), Some((33, 34)));
        assert_eq!(r("1000").map(|u| (u.uid, u.gid)).ok(), Some((1000, 0)));
        let forced = r("www:web").unwrap_or_default();
        assert_eq!((forced.uid, forced.gid), (33, 70));
        assert!(forced.additional_gids.is_empty());
        assert_eq!(r("5:6").map(|u| (u.uid, u.gid)).ok(), Some((5, 6)));
    }

    #[test]
    fn unknown_names_are_named() {
        let e = r("nobody").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("\"nobody\"") && e.contains("/etc/passwd"), "{e}");
        let e = r("www:nogroup")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("\"www:nogroup\"") && e.contains("/etc/group"),
            "{e}"
        );
        let e = resolve_in("www", None, None).err().map(|e| e.to_string());
        assert!(e.is_some());
    }
}
