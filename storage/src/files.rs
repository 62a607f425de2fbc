//! Checkpoint files: safetensors that candle and PyTorch read, written durably
//! (a temporary file, fsynced, renamed into place, the directory fsynced) and
//! named after the BLAKE3 checksum of their bytes, which sled keeps and every
//! load checks.
//!
//! A state file is [`starling_protocol::state_file`]'s (the bytes state sync
//! serves), named after its manifest's root, so that the file a node
//! checkpoints is the one it serves; a residual file holds the
//! error-feedback residual under the model's names (and a delta file the
//! node's own signed delta, as it travels).

use std::{
    collections::BTreeMap,
    fs,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use starling_protocol::{
    chunks::{ChunkHasher, CHUNK_BYTES},
    state_file::{self, Layout, FORMAT_KEY, ORDER_KEY},
    ModelState, StateManifest,
};

use crate::direct::DirectFile;

/// The folder of the datadir that holds the checkpoint files.
pub const DIR: &str = "checkpoints";
/// What a file being written is called until it is renamed into place.
const TMP_SUFFIX: &str = ".tmp";
const STATE_PREFIX: &str = "state-";
/// A state file written only to be served (of a round not checkpointed).
const SERVED_PREFIX: &str = "served-";
const RESIDUAL_PREFIX: &str = "residual-";
const EXTENSION: &str = ".safetensors";
const DELTA_PREFIX: &str = "delta-";
const DELTA_EXTENSION: &str = ".bin";
const RESIDUAL_FORMAT: &str = "residual/1";

/// A file's BLAKE3 checksum (of a state file: its manifest's root).
pub type Checksum = [u8; 32];

/// The name of the state file of `round` with checksum `sum`.
pub fn state_name(round: u64, sum: &Checksum) -> String {
    format!("{STATE_PREFIX}{round:08}-{}{EXTENSION}", short_hex(sum))
}

/// The name of a state file written only to be served, of `round` with root `root`.
pub fn served_name(round: u64, root: &Checksum) -> String {
    format!("{SERVED_PREFIX}{round:08}-{}{EXTENSION}", short_hex(root))
}

/// Whether `name` is a file written only to be served.
pub fn is_served(name: &str) -> bool {
    name.starts_with(SERVED_PREFIX) && name.ends_with(EXTENSION)
}

/// The name of the residual file with checksum `sum`.
pub fn residual_name(sum: &Checksum) -> String {
    format!("{RESIDUAL_PREFIX}{}{EXTENSION}", short_hex(sum))
}

/// The name of the file of the node's own signed delta (its wire bytes) with checksum `sum`.
pub fn delta_name(sum: &Checksum) -> String {
    format!("{DELTA_PREFIX}{}{DELTA_EXTENSION}", short_hex(sum))
}

fn short_hex(sum: &Checksum) -> String {
    sum[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` is a file this module writes (and may therefore delete).
pub fn is_ours(name: &str) -> bool {
    ((name.starts_with(STATE_PREFIX) || name.starts_with(RESIDUAL_PREFIX)) && name.ends_with(EXTENSION))
        || (name.starts_with(DELTA_PREFIX) && name.ends_with(DELTA_EXTENSION))
        || is_temporary(name)
}

/// Whether `name` is a file left half-written by a crash.
pub fn is_temporary(name: &str) -> bool {
    name.ends_with(TMP_SUFFIX)
}

/// What goes into a residual file. Its bytes depend on the values alone, so
/// equal residuals have equal checksums and are written once.
pub struct ResidualFile<'a> {
    pub layout: &'a Layout,
    pub residual: &'a [f32],
}

impl ResidualFile<'_> {
    pub fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        let metadata =
            BTreeMap::from([(FORMAT_KEY, RESIDUAL_FORMAT.to_string()), (ORDER_KEY, self.layout.order())]);
        state_file::write_safetensors(out, self.layout.cut("", self.residual), &metadata)
    }
}

/// The checksum of what `write` writes, without writing it anywhere.
pub fn checksum_of(write: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Checksum {
    let mut sink = Hashing { inner: io::sink(), hasher: hasher() };
    write(&mut sink).expect("a sink takes every byte");
    *sink.hasher.finalize().as_bytes()
}

/// The checksum of a file's bytes.
pub fn checksum(bytes: &[u8]) -> Checksum {
    let mut h = hasher();
    h.update(bytes);
    *h.finalize().as_bytes()
}

fn hasher() -> blake3::Hasher {
    blake3::Hasher::new_derive_key("starling 2026-12 checkpoint file v1")
}

/// Writes `dir/name` whole or not at all: into `name.tmp`, fsynced, renamed
/// into place, and the directory fsynced, so that after a crash the name holds
/// either nothing or every byte. Returns the checksum of the bytes.
pub fn write_durably(
    dir: &Path,
    name: impl FnOnce(&Checksum) -> String,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<(Checksum, PathBuf)> {
    write_named(dir, name, write, true)
}

/// As [`write_durably`], or (`durable` false) without the fsyncs: the file is
/// whole and in place for this machine's readers (a killed process loses
/// nothing the kernel holds), and the caller makes it durable later. Either
/// way its bytes go past the page cache ([`DirectFile`]): what is written
/// here (the outbox's delta, residuals) is read again only by a restart.
pub fn write_named(
    dir: &Path,
    name: impl FnOnce(&Checksum) -> String,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    durable: bool,
) -> io::Result<(Checksum, PathBuf)> {
    let (hasher, tmp) = write_hashed(dir, hasher(), write, true, durable)?;
    let sum = *hasher.finalize().as_bytes();
    let path = dir.join(name(&sum));
    fs::rename(&tmp, &path)?;
    if durable {
        sync_dir(dir)?;
    }
    Ok((sum, path))
}

/// Writes the state file of `state` under `name` of its manifest's root,
/// hashing its chunks on the way, durably (as [`write_durably`]) or, for a
/// file no restart reads (`durable` false), without the fsyncs. Returns the
/// manifest and the file's path.
pub fn write_state_file(
    dir: &Path,
    layout: &Layout,
    state: &ModelState,
    name: impl FnOnce(&Checksum) -> String,
    durable: bool,
) -> io::Result<(StateManifest, PathBuf)> {
    let write = |out: &mut dyn Write| state_file::write_state(layout, state, out);
    let (hasher, tmp) = write_hashed(dir, ChunkHasher::default(), write, durable, durable)?;
    let manifest = hasher.finish(state.round, state.lineage);
    let path = dir.join(name(&manifest.root()));
    fs::rename(&tmp, &path)?;
    if durable {
        sync_dir(dir)?;
    }
    Ok((manifest, path))
}

/// Writes `dir/writing.tmp` through `hasher`, past the page cache if
/// `direct` ([`DirectFile`]: for files not read again soon), fsynced if `durable`.
fn write_hashed<H: Write>(
    dir: &Path,
    hasher: H,
    write: impl FnOnce(&mut dyn Write) -> io::Result<()>,
    direct: bool,
    durable: bool,
) -> io::Result<(H, PathBuf)> {
    let tmp = dir.join(format!("writing{TMP_SUFFIX}"));
    let file = DirectFile::create(&tmp, direct)?;
    let mut out = BufWriter::with_capacity(1 << 20, Hashing { inner: file, hasher });
    write(&mut out)?;
    let Hashing { inner: file, hasher } = out.into_inner().map_err(|e| e.into_error())?;
    let file = file.finish()?;
    if durable {
        file.sync_all()?;
    }
    Ok((hasher, tmp))
}

/// Makes the directory's entries (a rename, a new file) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// Reads `path` and checks its bytes against `sum`.
pub fn read_checked(path: &Path, sum: &Checksum) -> Result<Vec<u8>, String> {
    let bytes = fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if &checksum(&bytes) != sum {
        return Err(format!("checksum mismatch in {} (torn or corrupted file)", path.display()));
    }
    Ok(bytes)
}

/// Whether `bytes`, a state file, are the file named by `sum`: the root of
/// their manifest, or (a file of an older version) their checksum.
pub fn state_matches(bytes: &[u8], sum: &Checksum) -> Result<(), String> {
    let torn = "checksum mismatch (torn or corrupted file)";
    let (round, lineage) = state_file::read_round_and_lineage(bytes).map_err(|e| format!("{torn}: {e}"))?;
    if &StateManifest::of_bytes(round, lineage, bytes).root() == sum || &checksum(bytes) == sum {
        return Ok(());
    }
    Err(torn.into())
}

/// A residual file's values, for a model of `count` values.
pub fn decode_residual(bytes: &[u8], count: usize) -> Result<Vec<f32>, String> {
    state_file::decode_values(bytes, RESIDUAL_FORMAT, count).map_err(|e| e.to_string())
}

/// The manifest of the state file at `path`, its chunks hashed as it is read
/// (in pieces: never the whole file in memory); `None` if it is not a state file.
pub fn manifest_of_file(path: &Path) -> std::io::Result<Option<StateManifest>> {
    use std::io::Read;
    let mut file = fs::File::open(path)?;
    let mut hasher = ChunkHasher::default();
    let mut piece = vec![0; CHUNK_BYTES];
    let mut first = None;
    loop {
        let n = file.read(&mut piece)?;
        if n == 0 {
            break;
        }
        if first.is_none() {
            first = Some(state_file::read_round_and_lineage(&piece[..n]));
        }
        hasher.write_all(&piece[..n])?;
    }
    Ok(match first {
        Some(Ok((round, lineage))) => Some(hasher.finish(round, lineage)),
        _ => None,
    })
}

/// A writer that hashes what passes through it.
struct Hashing<W, H> {
    inner: W,
    hasher: H,
}

impl<W: Write, H: Write> Write for Hashing<W, H> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.write_all(&buf[..n])?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
