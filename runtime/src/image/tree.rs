//! The merged root filesystem as an in-memory tree of metadata: layers are
//! applied into it in order, whiteouts delete from it, and `squash` writes
//! it out. File contents are not here: a regular file is an (offset, length)
//! window of the spool file.
//!
//! This is hand-written because the crates that apply OCI layers do it onto
//! a host directory, which is what this module exists to avoid. Semantics
//! follow containerd's and docker's layer applier:
//! - a `.wh.NAME` entry deletes `NAME` (and its subtree) from lower layers;
//! - `.wh..wh..opq` drops every lower-layer child of its directory;
//! - neither touches what the same layer adds, whatever the entry order
//!   (every node carries the index of the layer that last wrote it);
//! - a directory entry over a directory keeps the children, any other
//!   overwrite replaces the node (and a directory's subtree);
//! - a symlink in the parent part of a path is followed inside the tree (as
//!   docker's chrooted extraction would), never on the host.

use std::collections::BTreeMap;

/// A path component (bytes: tar names need not be UTF-8).
pub(super) type Name = Vec<u8>;

/// Paths deeper than this are refused: the writers recurse per level, and
/// no real image comes near it (Linux's PATH_MAX allows at most 2048).
const MAX_DEPTH: usize = 512;

/// Ownership, permission bits (`0o7777`) and modification time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Meta {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
}

/// What a node is.
#[derive(Clone, Debug)]
pub(super) enum Kind {
    Dir(BTreeMap<Name, Node>),
    /// Contents are `len` bytes at `offset` in the spool.
    File {
        offset: u64,
        len: u64,
    },
    Symlink(Vec<u8>),
    Char {
        major: u32,
        minor: u32,
    },
    Block {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// One file, directory, link or device.
#[derive(Clone, Debug)]
pub(super) struct Node {
    pub meta: Meta,
    pub kind: Kind,
    /// Index of the layer that last wrote this node.
    layer: usize,
}

impl Node {
    /// A directory made because an entry needed a parent that no entry gave.
    fn implicit_dir(layer: usize) -> Self {
        Self {
            meta: Meta {
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
            },
            kind: Kind::Dir(BTreeMap::new()),
            layer,
        }
    }
}

/// Why an entry cannot be placed; the caller adds the entry's path.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum TreeError {
    /// A parent component is neither a directory nor a symlink to one.
    NotADirectory(String),
    /// Symlinks in the parent path loop.
    LinkLoop,
    /// Deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A hard link to a path that does not exist (yet).
    MissingLinkTarget(String),
    /// A hard link to a directory.
    LinkToDirectory(String),
    /// A non-directory entry for the root itself.
    RootNotDirectory,
}

impl TreeError {
    /// The rest of the sentence after "entry PATH".
    pub(super) fn problem(&self) -> String {
        match self {
            Self::NotADirectory(p) => format!("needs {p} to be a directory, and it is not"),
            Self::LinkLoop => "has symlinks in its path that loop".into(),
            Self::TooDeep => format!("is nested deeper than {MAX_DEPTH} levels"),
            Self::MissingLinkTarget(p) => format!("is a hard link to {p}, which does not exist"),
            Self::LinkToDirectory(p) => format!("is a hard link to directory {p}"),
            Self::RootNotDirectory => "replaces the root directory with a non-directory".into(),
        }
    }
}

fn show(comps: &[Name]) -> String {
    let joined: Vec<String> = comps
        .iter()
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect();
    format!("/{}", joined.join("/"))
}

/// Keeps what layer `layer` wrote under `node` (and the directories leading
/// to it), drops the rest. Returns whether `node` itself stays.
fn prune(node: &mut Node, layer: usize) -> bool {
    match &mut node.kind {
        Kind::Dir(children) => {
            children.retain(|_, child| prune(child, layer));
            node.layer == layer || !children.is_empty()
        }
        _ => node.layer == layer,
    }
}

/// The image's root filesystem.
pub(super) struct Tree {
    root: Node,
}

impl Tree {
    pub(super) fn new() -> Self {
        Self {
            root: Node::implicit_dir(0),
        }
    }

    pub(super) fn root(&self) -> &Node {
        &self.root
    }

    /// Number of nodes (root included) and total bytes of regular files.
    pub(super) fn stats(&self) -> (u64, u64) {
        fn walk(node: &Node, acc: &mut (u64, u64)) {
            acc.0 += 1;
            match &node.kind {
                Kind::Dir(children) => children.values().for_each(|child| walk(child, acc)),
                Kind::File { len, .. } => acc.1 += len,
                _ => {}
            }
        }
        let mut acc = (0, 0);
        walk(&self.root, &mut acc);
        acc
    }

    /// Puts `kind` at `path`, as layer `layer`'s entry.
    pub(super) fn insert(
        &mut self,
        path: &[Name],
        kind: Kind,
        meta: Meta,
        layer: usize,
    ) -> Result<(), TreeError> {
        let Some((name, parent)) = path.split_last() else {
            // The root's own entry ("./"): only its metadata counts.
            if !matches!(kind, Kind::Dir(_)) {
                return Err(TreeError::RootNotDirectory);
            }
            self.root.meta = meta;
            return Ok(());
        };
        if path.len() > MAX_DEPTH {
            return Err(TreeError::TooDeep);
        }
        let Some(children) = self.dir_mut(parent, Some(layer))? else {
            return Ok(()); // unreachable: creating walks always find a directory
        };
        match children.get_mut(name) {
            Some(old) if matches!((&old.kind, &kind), (Kind::Dir(_), Kind::Dir(_))) => {
                old.meta = meta;
                old.layer = layer;
            }
            _ => {
                children.insert(name.clone(), Node { meta, kind, layer });
            }
        }
        Ok(())
    }

    /// What a hard link to `target` becomes: a copy of the target's node
    /// (same spool window, same metadata, as the link shares the inode).
    pub(super) fn hardlink(&self, target: &[Name]) -> Result<(Kind, Meta), TreeError> {
        let Some((name, parent)) = target.split_last() else {
            return Err(TreeError::LinkToDirectory("/".into()));
        };
        let parent = self.canonical(parent)?;
        let node = self.lookup(&parent).and_then(|dir| match &dir.kind {
            Kind::Dir(children) => children.get(name),
            _ => None,
        });
        match node {
            None => Err(TreeError::MissingLinkTarget(show(target))),
            Some(Node {
                kind: Kind::Dir(_), ..
            }) => Err(TreeError::LinkToDirectory(show(target))),
            Some(node) => Ok((node.kind.clone(), node.meta)),
        }
    }

    /// `.wh.NAME` in `parent`: deletes `NAME` as lower layers left it.
    pub(super) fn whiteout(&mut self, parent: &[Name], name: &[u8], layer: usize) {
        if let Ok(Some(children)) = self.dir_mut(parent, None) {
            if let Some(node) = children.get_mut(name) {
                if !prune(node, layer) {
                    children.remove(name);
                }
            }
        }
    }

    /// `.wh..wh..opq` in `dir`: drops what lower layers put in it.
    pub(super) fn opaque(&mut self, dir: &[Name], layer: usize) {
        if let Ok(Some(children)) = self.dir_mut(dir, None) {
            children.retain(|_, child| prune(child, layer));
        }
    }

    /// The node at `path`, following nothing (`path` must be canonical).
    fn lookup(&self, path: &[Name]) -> Option<&Node> {
        let mut node = &self.root;
        for name in path {
            let Kind::Dir(children) = &node.kind else {
                return None;
            };
            node = children.get(name)?;
        }
        Some(node)
    }

    /// Whether walking `path` meets a symlink.
    fn crosses_symlink(&self, path: &[Name]) -> bool {
        let mut node = &self.root;
        for name in path {
            let Kind::Dir(children) = &node.kind else {
                return false;
            };
            match children.get(name) {
                Some(Node {
                    kind: Kind::Symlink(_),
                    ..
                }) => return true,
                Some(child) => node = child,
                None => return false,
            }
        }
        false
    }

    /// `path` with every symlink among its existing components resolved
    /// inside the tree (`..` stops at the root, as in a chroot).
    fn canonical(&self, path: &[Name]) -> Result<Vec<Name>, TreeError> {
        let mut out: Vec<Name> = Vec::with_capacity(path.len());
        let mut todo: Vec<Name> = path.iter().rev().cloned().collect();
        let mut hops = 0;
        while let Some(name) = todo.pop() {
            match name.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    out.pop();
                    continue;
                }
                _ => {}
            }
            let child = self.lookup(&out).and_then(|dir| match &dir.kind {
                Kind::Dir(children) => children.get(&name),
                _ => None,
            });
            if let Some(Node {
                kind: Kind::Symlink(target),
                ..
            }) = child
            {
                hops += 1;
                if hops > 40 {
                    return Err(TreeError::LinkLoop);
                }
                if target.starts_with(b"/") {
                    out.clear();
                }
                todo.extend(target.split(|b| *b == b'/').rev().map(<[u8]>::to_vec));
                continue;
            }
            out.push(name);
            if out.len() > MAX_DEPTH {
                return Err(TreeError::TooDeep);
            }
        }
        Ok(out)
    }

    /// The children of directory `path`. With `create: Some(layer)`,
    /// missing directories are made (as that layer's); with `None`, a
    /// missing one gives `Ok(None)`.
    fn dir_mut(
        &mut self,
        path: &[Name],
        create: Option<usize>,
    ) -> Result<Option<&mut BTreeMap<Name, Node>>, TreeError> {
        let canonical;
        let path = if self.crosses_symlink(path) {
            canonical = self.canonical(path)?;
            canonical.as_slice()
        } else {
            path
        };
        let mut node = &mut self.root;
        for (depth, name) in path.iter().enumerate() {
            let Kind::Dir(children) = &mut node.kind else {
                return Err(TreeError::NotADirectory(show(&path[..depth])));
            };
            node = match create {
                Some(layer) => children
                    .entry(name.clone())
                    .or_insert_with(|| Node::implicit_dir(layer)),
                None => match children.get_mut(name) {
                    Some(child) => child,
                    None => return Ok(None),
                },
            };
        }
        match &mut node.kind {
            Kind::Dir(children) => Ok(Some(children)),
            _ => Err(TreeError::NotADirectory(show(path))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(path: &str) -> Vec<Name> {
        path.split('/')
            .filter(|c| !c.is_empty())
            .map(|c| c.as_bytes().to_vec())
            .collect()
    }
    const M: Meta = Meta {
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime: 0,
    };
    fn file(n: u64) -> Kind {
        Kind::File { offset: n, len: 1 }
    }
    fn dir() -> Kind {
        Kind::Dir(BTreeMap::new())
    }
    /// Every path in the tree, depth first.
    fn paths(tree: &Tree) -> Vec<String> {
        fn walk(prefix: &str, node: &Node, out: &mut Vec<String>) {
            if let Kind::Dir(children) = &node.kind {
                for (name, child) in children {
                    let path = format!("{prefix}/{}", String::from_utf8_lossy(name));
                    out.push(path.clone());
                    walk(&path, child, out);
                }
            }
        }
        let mut out = Vec::new();
        walk("", tree.root(), &mut out);
        out
    }

    #[test]
    fn whiteout_deletes_lower_but_not_same_layer() {
        let mut t = Tree::new();
        t.insert(&p("a/x"), file(0), M, 0).unwrap();
        t.insert(&p("a/y"), file(1), M, 0).unwrap();
        t.whiteout(&p("a"), b"x", 1);
        // same layer: the entry and its whiteout, in either order, keep the entry
        t.insert(&p("a/z"), file(2), M, 1).unwrap();
        t.whiteout(&p("a"), b"z", 1);
        t.whiteout(&p("nowhere"), b"z", 1);
        assert_eq!(paths(&t), ["/a", "/a/y", "/a/z"]);
    }

    #[test]
    fn opaque_drops_lower_children_in_any_entry_order() {
        let mut t = Tree::new();
        t.insert(&p("o/old"), file(0), M, 0).unwrap();
        t.insert(&p("o/sub/deep"), file(1), M, 0).unwrap();
        t.insert(&p("o/sub/new"), file(2), M, 1).unwrap();
        t.opaque(&p("o"), 1);
        t.insert(&p("o/later"), file(3), M, 1).unwrap();
        assert_eq!(paths(&t), ["/o", "/o/later", "/o/sub", "/o/sub/new"]);
    }

    #[test]
    fn dir_over_dir_merges_other_overwrites_replace() {
        let mut t = Tree::new();
        t.insert(&p("d/f"), file(0), M, 0).unwrap();
        t.insert(&p("d"), dir(), Meta { mode: 0o700, ..M }, 1)
            .unwrap();
        assert_eq!(paths(&t), ["/d", "/d/f"]);
        assert_eq!(t.lookup(&p("d")).unwrap().meta.mode, 0o700);
        t.insert(&p("d"), Kind::Symlink(b"elsewhere".to_vec()), M, 2)
            .unwrap();
        assert_eq!(paths(&t), ["/d"]);
    }

    #[test]
    fn parent_symlinks_are_followed_inside_the_tree() {
        let mut t = Tree::new();
        t.insert(&p("usr/lib"), dir(), M, 0).unwrap();
        t.insert(&p("lib"), Kind::Symlink(b"usr/lib".to_vec()), M, 0)
            .unwrap();
        t.insert(&p("up"), Kind::Symlink(b"../../../usr".to_vec()), M, 0)
            .unwrap();
        t.insert(&p("lib/a.so"), file(0), M, 1).unwrap();
        t.insert(&p("up/lib/b.so"), file(1), M, 1).unwrap();
        assert_eq!(
            paths(&t),
            [
                "/lib",
                "/up",
                "/usr",
                "/usr/lib",
                "/usr/lib/a.so",
                "/usr/lib/b.so"
            ]
        );
        t.insert(&p("loop"), Kind::Symlink(b"loop".to_vec()), M, 1)
            .unwrap();
        assert_eq!(
            t.insert(&p("loop/x"), file(2), M, 1),
            Err(TreeError::LinkLoop)
        );
        t.insert(&p("plain"), file(3), M, 1).unwrap();
        assert_eq!(
            t.insert(&p("plain/x"), file(4), M, 1),
            Err(TreeError::NotADirectory("/plain".into()))
        );
    }

    #[test]
    fn hardlinks_copy_the_target_node() {
        let mut t = Tree::new();
        t.insert(
            &p("bin/busybox"),
            Kind::File { offset: 7, len: 9 },
            Meta { mode: 0o755, ..M },
            0,
        )
        .unwrap();
        let (kind, meta) = t.hardlink(&p("bin/busybox")).unwrap();
        assert!(matches!(kind, Kind::File { offset: 7, len: 9 }));
        assert_eq!(meta.mode, 0o755);
        assert_eq!(
            t.hardlink(&p("bin/nope")).unwrap_err(),
            TreeError::MissingLinkTarget("/bin/nope".into())
        );
        assert_eq!(
            t.hardlink(&p("bin")).unwrap_err(),
            TreeError::LinkToDirectory("/bin".into())
        );
    }

    #[test]
    fn root_entry_sets_root_metadata_only() {
        let mut t = Tree::new();
        t.insert(&[], dir(), Meta { mode: 0o750, ..M }, 0).unwrap();
        assert_eq!(t.root().meta.mode, 0o750);
        assert_eq!(
            t.insert(&[], file(0), M, 0),
            Err(TreeError::RootNotDirectory)
        );
        let deep: Vec<Name> = (0..=MAX_DEPTH).map(|_| b"d".to_vec()).collect();
        assert_eq!(t.insert(&deep, file(0), M, 0), Err(TreeError::TooDeep));
    }
}
