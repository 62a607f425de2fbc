//! Checkpoint files: safetensors that candle and PyTorch read, written durably
//! (a temporary file, fsynced, renamed into place, the directory fsynced) and
//! named after the BLAKE3 checksum of their bytes, which sled keeps and every
//! load checks.
//!
//! A state file holds the parameters under the model's own tensor names and the
//! outer momentum under `outer_momentum.<name>`; a residual file holds the
//! error-feedback residual under the model's names (and a delta file the
//! node's own signed delta, as it travels). Tensors are laid out sorted
//! by name; the metadata key `starling.order` lists the names in the order of
//! the node's flat parameter vector, so a file reads back without the model.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, BufWriter, Write},
    path::{Path, PathBuf},
};

use starling_protocol::ModelState;

#[cfg(target_endian = "big")]
compile_error!("checkpoint files are written as little-endian f32 straight from memory");

/// The folder of the datadir that holds the checkpoint files.
pub const DIR: &str = "checkpoints";
/// What a file being written is called until it is renamed into place.
const TMP_SUFFIX: &str = ".tmp";
const STATE_PREFIX: &str = "state-";
const RESIDUAL_PREFIX: &str = "residual-";
const EXTENSION: &str = ".safetensors";
const DELTA_PREFIX: &str = "delta-";
const DELTA_EXTENSION: &str = ".bin";
/// The prefix of the momentum's tensors in a state file.
pub const MOMENTUM_PREFIX: &str = "outer_momentum.";
/// Metadata: the tensor names in the order of the flat vector.
pub const ORDER_KEY: &str = "starling.order";
/// Metadata: what the file is (`state/1` or `residual/1`).
pub const FORMAT_KEY: &str = "starling.format";
/// Metadata: the round of the state.
pub const ROUND_KEY: &str = "starling.round";
/// Metadata: the state's lineage, as hex.
pub const LINEAGE_KEY: &str = "starling.lineage";
const STATE_FORMAT: &str = "state/1";
const RESIDUAL_FORMAT: &str = "residual/1";

/// A file's BLAKE3 checksum.
pub type Checksum = [u8; 32];

/// Names and shapes of a model's tensors, in the order of its flat parameter vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    tensors: Vec<(String, Vec<usize>)>,
}

impl Layout {
    /// A layout of `(name, shape)` pairs in the flat vector's order.
    /// Names must be distinct and must not start with [`MOMENTUM_PREFIX`].
    pub fn new(tensors: Vec<(String, Vec<usize>)>) -> Result<Self, String> {
        let mut seen = std::collections::BTreeSet::new();
        for (name, _) in &tensors {
            if name.starts_with(MOMENTUM_PREFIX) || name.is_empty() || !seen.insert(name.as_str()) {
                return Err(format!("tensor name `{name}` is empty, repeated or reserved"));
            }
        }
        Ok(Self { tensors })
    }

    /// One tensor `params` of `len` values: for a store that was given no model.
    pub fn flat(len: usize) -> Self {
        Self { tensors: vec![("params".to_string(), vec![len])] }
    }

    /// Values in all tensors together.
    pub fn len(&self) -> usize {
        self.tensors.iter().map(|(_, shape)| shape.iter().product::<usize>()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn order(&self) -> String {
        let names: Vec<&str> = self.tensors.iter().map(|(n, _)| n.as_str()).collect();
        serde_json::to_string(&names).expect("strings serialize")
    }

    /// `flat` cut into the layout's tensors, named with `prefix`.
    fn cut<'a>(&'a self, prefix: &str, flat: &'a [f32]) -> Vec<(String, &'a [usize], &'a [f32])> {
        let mut offset = 0;
        self.tensors
            .iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let part = &flat[offset..offset + n];
                offset += n;
                (format!("{prefix}{name}"), shape.as_slice(), part)
            })
            .collect()
    }
}

/// The name of the state file of `round` with checksum `sum`.
pub fn state_name(round: u64, sum: &Checksum) -> String {
    format!("{STATE_PREFIX}{round:08}-{}{EXTENSION}", short_hex(sum))
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

/// What goes into a state file.
pub struct StateFile<'a> {
    pub layout: &'a Layout,
    pub round: u64,
    pub lineage: [u8; 32],
    pub params: &'a [f32],
    pub momentum: &'a [f32],
}

impl StateFile<'_> {
    /// Writes the file's bytes to `out`.
    pub fn write_to(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut tensors = self.layout.cut("", self.params);
        tensors.extend(self.layout.cut(MOMENTUM_PREFIX, self.momentum));
        let metadata = BTreeMap::from([
            (FORMAT_KEY, STATE_FORMAT.to_string()),
            (ROUND_KEY, self.round.to_string()),
            (LINEAGE_KEY, self.lineage.iter().map(|b| format!("{b:02x}")).collect()),
            (ORDER_KEY, self.layout.order()),
        ]);
        write_safetensors(out, tensors, &metadata)
    }
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
        write_safetensors(out, self.layout.cut("", self.residual), &metadata)
    }
}

/// The safetensors format: an 8-byte little-endian header length, a JSON header
/// padded with spaces to a multiple of 8, then the tensors' bytes. Written
/// here rather than by `safetensors::serialize` so that it streams into the
/// file without a copy of the state in memory, and so that its bytes (the
/// metadata's order included) are the same for the same values.
fn write_safetensors(
    out: &mut dyn Write,
    mut tensors: Vec<(String, &[usize], &[f32])>,
    metadata: &BTreeMap<&str, String>,
) -> io::Result<()> {
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::to_value(metadata).expect("strings serialize"));
    let mut offset = 0usize;
    for (name, shape, data) in &tensors {
        let end = offset + std::mem::size_of_val(*data);
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut header = serde_json::to_vec(&header).expect("a JSON map serializes");
    header.resize(header.len().next_multiple_of(8), b' ');
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(&header)?;
    for (_, _, data) in &tensors {
        out.write_all(bytemuck::cast_slice(data))?;
    }
    Ok(())
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
    let tmp = dir.join(format!("writing{TMP_SUFFIX}"));
    let file = fs::File::create(&tmp)?;
    let mut out = BufWriter::with_capacity(1 << 20, Hashing { inner: file, hasher: hasher() });
    write(&mut out)?;
    let Hashing { inner: file, hasher } = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    drop(file);
    let sum = *hasher.finalize().as_bytes();
    let path = dir.join(name(&sum));
    fs::rename(&tmp, &path)?;
    sync_dir(dir)?;
    Ok((sum, path))
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

/// The state a state file holds, for a model of `count` values.
pub fn decode_state(bytes: &[u8], count: usize) -> Result<ModelState, String> {
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("not safetensors: {e}"))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let meta = meta.metadata().clone().unwrap_or_default();
    let get = |key: &str| meta.get(key).ok_or_else(|| format!("metadata `{key}` is missing"));
    if get(FORMAT_KEY)? != STATE_FORMAT {
        return Err(format!("format is `{}`, expected `{STATE_FORMAT}`", get(FORMAT_KEY)?));
    }
    let round = get(ROUND_KEY)?.parse().map_err(|_| "round is not a number".to_string())?;
    let lineage = parse_hex32(get(LINEAGE_KEY)?)?;
    let order: Vec<String> = serde_json::from_str(get(ORDER_KEY)?).map_err(|e| format!("order: {e}"))?;
    let params = gather(&file, "", &order, count)?;
    let momentum = gather(&file, MOMENTUM_PREFIX, &order, count)?;
    Ok(ModelState { round, lineage, params, momentum })
}

/// A residual file's values, for a model of `count` values.
pub fn decode_residual(bytes: &[u8], count: usize) -> Result<Vec<f32>, String> {
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format!("not safetensors: {e}"))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get(FORMAT_KEY).map(String::as_str) != Some(RESIDUAL_FORMAT) {
        return Err(format!("not a `{RESIDUAL_FORMAT}` file"));
    }
    let order = meta.get(ORDER_KEY).ok_or("metadata `starling.order` is missing")?;
    let order: Vec<String> = serde_json::from_str(order).map_err(|e| format!("order: {e}"))?;
    gather(&file, "", &order, count)
}

fn gather(
    file: &safetensors::SafeTensors,
    prefix: &str,
    order: &[String],
    count: usize,
) -> Result<Vec<f32>, String> {
    let mut out = Vec::with_capacity(count);
    for name in order {
        let name = format!("{prefix}{name}");
        let view = file.tensor(&name).map_err(|_| format!("tensor `{name}` is missing"))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(format!("tensor `{name}` is {:?}, not F32", view.dtype()));
        }
        if out.len() + view.data().len() / 4 > count {
            return Err(format!("the file holds more than the model's {count} values"));
        }
        out.extend(view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))));
    }
    if out.len() != count {
        return Err(format!("the file holds {} values, the model has {count}", out.len()));
    }
    Ok(out)
}

fn parse_hex32(hex: &str) -> Result<[u8; 32], String> {
    let bad = || format!("`{hex}` is not 32 bytes of hex");
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: blake3::Hasher,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
