//! Where a kernel or initrd comes from: a file, or bytes already in this
//! process's memory (the guest that a `corral` build embeds in its own
//! image, which is read straight from the executable's mapping, never
//! copied to disk).
//!
//! Both are read through one [`BootReader`], which has what `linux-loader`
//! needs (`Read + Seek + ReadVolatile`), so the loaders do not care which.

use std::fmt;
use std::fs::File;
use std::io::{self, Cursor, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::volatile_memory::VolatileSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError};

/// A kernel or initrd.
#[derive(Clone, PartialEq, Eq)]
pub enum BootFile {
    /// A file on disk.
    Path(PathBuf),
    /// Bytes of this process (e.g. `include_bytes!`), with a name for
    /// messages.
    Embedded {
        /// What to call it in messages, e.g. "embedded bzImage".
        name: &'static str,
        /// The contents.
        bytes: &'static [u8],
    },
}

impl BootFile {
    /// What messages call it: the path, or `<name>` for embedded bytes.
    pub fn label(&self) -> PathBuf {
        match self {
            BootFile::Path(p) => p.clone(),
            BootFile::Embedded { name, .. } => PathBuf::from(format!("<{name}>")),
        }
    }

    /// The path, for a file on disk.
    pub fn path(&self) -> Option<&Path> {
        match self {
            BootFile::Path(p) => Some(p),
            BootFile::Embedded { .. } => None,
        }
    }

    /// Opens it for reading, with its length.
    pub fn open(&self) -> io::Result<(BootReader, u64)> {
        match self {
            BootFile::Path(p) => {
                let file = File::open(p)?;
                let len = file.metadata()?.len();
                Ok((BootReader::File(file), len))
            }
            BootFile::Embedded { bytes, .. } => {
                Ok((BootReader::Bytes(Cursor::new(*bytes)), bytes.len() as u64))
            }
        }
    }
}

impl fmt::Debug for BootFile {
    // Embedded bytes are megabytes: show the name and size only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BootFile::Path(p) => write!(f, "{p:?}"),
            BootFile::Embedded { name, bytes } => write!(f, "<{name}, {} bytes>", bytes.len()),
        }
    }
}

impl From<PathBuf> for BootFile {
    fn from(p: PathBuf) -> Self {
        BootFile::Path(p)
    }
}

impl From<&PathBuf> for BootFile {
    fn from(p: &PathBuf) -> Self {
        BootFile::Path(p.clone())
    }
}

impl From<&Path> for BootFile {
    fn from(p: &Path) -> Self {
        BootFile::Path(p.to_path_buf())
    }
}

impl From<&str> for BootFile {
    fn from(p: &str) -> Self {
        BootFile::Path(p.into())
    }
}

impl From<String> for BootFile {
    fn from(p: String) -> Self {
        BootFile::Path(p.into())
    }
}

/// An open kernel or initrd.
pub enum BootReader {
    /// A file.
    File(File),
    /// Bytes in memory.
    Bytes(Cursor<&'static [u8]>),
}

impl Read for BootReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            BootReader::File(f) => f.read(buf),
            BootReader::Bytes(c) => c.read(buf),
        }
    }
}

impl Seek for BootReader {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        match self {
            BootReader::File(f) => f.seek(pos),
            BootReader::Bytes(c) => c.seek(pos),
        }
    }
}

impl ReadVolatile for BootReader {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        match self {
            BootReader::File(f) => f.read_volatile(buf),
            BootReader::Bytes(c) => c.read_volatile(buf),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static BYTES: &[u8] = b"0123456789";

    #[test]
    fn embedded_bytes_read_and_seek_like_a_file() {
        let f = BootFile::Embedded {
            name: "test",
            bytes: BYTES,
        };
        assert_eq!(f.label(), PathBuf::from("<test>"));
        assert_eq!(format!("{f:?}"), "<test, 10 bytes>");
        let (mut r, len) = f.open().unwrap();
        assert_eq!(len, 10);
        r.seek(SeekFrom::Start(7)).unwrap();
        let mut s = String::new();
        r.read_to_string(&mut s).unwrap();
        assert_eq!(s, "789");
    }
}
