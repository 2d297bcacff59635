//! Positioned disk I/O straight into and out of guest memory: `pread`/
//! `pwrite` at a moving offset, one system call per segment where a seek
//! plus read would take two. Written here because `vm-memory` implements
//! `ReadVolatile`/`WriteVolatile` for files only at the file's own offset.

use std::fs::File;
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::{ReadVolatile, VolatileMemoryError, VolatileSlice, WriteVolatile};

/// A file read or written from `offset` on, advancing as it goes.
pub struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl<'a> FileAt<'a> {
    /// I/O on `file` starting at byte `offset`.
    pub fn new(file: &'a File, offset: u64) -> Self {
        Self { file, offset }
    }
}

fn last_error() -> VolatileMemoryError {
    VolatileMemoryError::IOError(std::io::Error::last_os_error())
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard_mut();
        // SAFETY: the VolatileSlice guarantees `guard.as_ptr()` is valid for
        // writes of `buf.len()` bytes while the guard lives; the fd is open
        // for the borrow of `self.file`.
        let n = unsafe {
            libc::pread(
                self.file.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                self.offset as libc::off_t,
            )
        };
        if n < 0 {
            buf.bitmap().mark_dirty(0, buf.len());
            return Err(last_error());
        }
        let n = n as usize;
        buf.bitmap().mark_dirty(0, n);
        self.offset += n as u64;
        Ok(n)
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let guard = buf.ptr_guard();
        // SAFETY: the VolatileSlice guarantees `guard.as_ptr()` is valid for
        // reads of `buf.len()` bytes while the guard lives; the fd is open.
        let n = unsafe {
            libc::pwrite(
                self.file.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                self.offset as libc::off_t,
            )
        };
        if n < 0 {
            return Err(last_error());
        }
        self.offset += n as u64;
        Ok(n as usize)
    }
}
