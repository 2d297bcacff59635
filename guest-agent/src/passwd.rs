//! The container's `/etc/passwd`, read without NSS (the agent is static and
//! the container's libc is not ours to load).

use std::path::Path;

/// The home directory of `uid` in the passwd file at `path`.
pub fn home_of(path: &Path, uid: u32) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    home_in(&text, uid)
}

fn home_in(text: &str, uid: u32) -> Option<String> {
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 || fields[2].parse::<u32>().ok()? != uid {
            return None;
        }
        Some(fields[5].to_string()).filter(|h| !h.is_empty())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn home_is_found_by_uid_and_bad_lines_are_skipped() {
        let text = "# comment\nroot:x:0:0:root:/root:/bin/sh\nbroken\n\
                    nobody:x:65534:65534:nobody:/nonexistent:/bin/false\nx:x:7:7::\n";
        assert_eq!(home_in(text, 0).as_deref(), Some("/root"));
        assert_eq!(home_in(text, 65534).as_deref(), Some("/nonexistent"));
        assert_eq!(home_in(text, 7), None);
        assert_eq!(home_in(text, 1000), None);
    }
}
