//! Model-sized files written past the page cache.
//!
//! A checkpoint of a 10⁸-parameter state is 800 MB a round. Written through
//! the page cache, every round asks the kernel for 800 MB of fresh cache pages
//! (and frees the last round's when its file is pruned); on a VM whose host
//! takes freed memory back, each such page costs a fault on the host, and
//! writing the file took 1.3 s of CPU a round at 10⁸. The bytes are not read
//! again soon (only by a restart or a peer's state sync), and a durable write
//! waits for the disk anyway: [`DirectFile`] writes them with `O_DIRECT`, from
//! an aligned buffer, straight to the disk. Where the file system refuses
//! `O_DIRECT` (tmpfs, some network file systems), or off Linux, it writes
//! through the page cache as before.

use std::{
    fs,
    io::{self, Write},
    path::{Path, PathBuf},
};

/// What `O_DIRECT` needs: buffer addresses, file offsets and lengths in
/// multiples of the device's logical block (512 or 4096 bytes).
const ALIGN: usize = 4096;
/// Bytes handed to the disk in one write.
const BLOCK: usize = 8 << 20;

/// A file being written whole, from the start, bypassing the page cache
/// where it was asked to and can. Call [`DirectFile::finish`] to write the last bytes.
pub(crate) struct DirectFile {
    file: fs::File,
    path: PathBuf,
    /// `BLOCK + ALIGN` bytes, of which `[start, start + BLOCK)` is aligned.
    buffer: Vec<u8>,
    start: usize,
    /// Bytes waiting in the aligned block.
    filled: usize,
    /// Bytes written to the file so far.
    written: u64,
    direct: bool,
}

impl DirectFile {
    /// Creates (or truncates) `path`, with `O_DIRECT` if `direct` and the
    /// file system takes it; else a plain file.
    pub(crate) fn create(path: &Path, direct: bool) -> io::Result<Self> {
        let (file, direct) = match direct.then(|| open_direct(path)) {
            Some(Ok(file)) => (file, true),
            _ => (fs::File::create(path)?, false),
        };
        let (buffer, start) = if direct {
            let buffer = vec![0u8; BLOCK + ALIGN];
            let start = buffer.as_ptr().align_offset(ALIGN);
            (buffer, start)
        } else {
            (Vec::new(), 0)
        };
        Ok(Self { file, path: path.to_owned(), buffer, start, filled: 0, written: 0, direct })
    }

    /// Writes what is still buffered and returns the file (not fsynced).
    pub(crate) fn finish(mut self) -> io::Result<fs::File> {
        if !self.direct || self.filled == 0 {
            return Ok(self.file);
        }
        // The aligned part goes as the blocks before it; the tail, shorter
        // than a block of the device, through a handle without O_DIRECT.
        let aligned = self.filled / ALIGN * ALIGN;
        let tail = self.start + aligned..self.start + self.filled;
        self.write_aligned(aligned)?;
        if !tail.is_empty() {
            let mut buffered = fs::OpenOptions::new().append(true).open(&self.path)?;
            buffered.write_all(&self.buffer[tail])?;
        }
        Ok(self.file)
    }

    /// Writes the first `len` bytes of the aligned block. A file system that
    /// took `O_DIRECT` at open but refuses its writes (`EINVAL`) gets them,
    /// and the rest of the file, through the page cache.
    fn write_aligned(&mut self, len: usize) -> io::Result<()> {
        let block = self.start..self.start + len;
        match self.file.write_all(&self.buffer[block.clone()]) {
            Err(e) if e.kind() == io::ErrorKind::InvalidInput && self.direct => {
                use std::io::Seek;
                let mut file = fs::OpenOptions::new().write(true).open(&self.path)?;
                file.set_len(self.written)?;
                file.seek(io::SeekFrom::Start(self.written))?;
                file.write_all(&self.buffer[block])?;
                self.file = file;
                self.direct = false;
            }
            result => result?,
        }
        self.written += len as u64;
        Ok(())
    }

    fn flush_block(&mut self) -> io::Result<()> {
        self.write_aligned(BLOCK)?;
        self.filled = 0;
        Ok(())
    }
}

impl Write for DirectFile {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if !self.direct {
            return self.file.write(data);
        }
        let n = data.len().min(BLOCK - self.filled);
        let at = self.start + self.filled;
        self.buffer[at..at + n].copy_from_slice(&data[..n]);
        self.filled += n;
        if self.filled == BLOCK {
            self.flush_block()?;
        }
        Ok(n)
    }

    /// Bytes short of a whole block stay buffered until [`DirectFile::finish`].
    fn flush(&mut self) -> io::Result<()> {
        if self.direct {
            Ok(())
        } else {
            self.file.flush()
        }
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path) -> io::Result<fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(path)
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_: &Path) -> io::Result<fs::File> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "O_DIRECT is Linux's"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    #[test]
    fn every_byte_lands_whatever_the_lengths() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0, 1, ALIGN - 1, ALIGN, ALIGN + 1, BLOCK - 1, BLOCK, BLOCK + ALIGN + 7, 2 * BLOCK + 100] {
            let path = dir.path().join(format!("f{len}"));
            let want = pattern(len);
            let mut file = DirectFile::create(&path, true).unwrap();
            // Pieces of odd sizes, as a serializer writes them.
            for piece in want.chunks(1 << 20 | 3) {
                file.write_all(piece).unwrap();
            }
            file.finish().unwrap().sync_all().unwrap();
            assert_eq!(fs::read(&path).unwrap(), want, "{len} bytes");
        }
    }

    #[test]
    fn tmpfs_gets_every_byte_too() {
        // /dev/shm is tmpfs, which refuses O_DIRECT or (newer kernels) takes it.
        let Ok(dir) = tempfile::tempdir_in("/dev/shm") else { return };
        let path = dir.path().join("f");
        let mut file = DirectFile::create(&path, true).unwrap();
        let want = pattern(BLOCK + ALIGN + 5);
        file.write_all(&want).unwrap();
        file.finish().unwrap();
        assert_eq!(fs::read(&path).unwrap(), want);
    }
}
