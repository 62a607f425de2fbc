//! The state file: one model state (round, lineage, parameters, outer
//! momentum) as safetensors, which candle and PyTorch read. It is at once
//! the checkpoint a node keeps on disk and the bytes state sync cuts into
//! chunks ([`crate::chunks`]): a node serves a peer's chunks straight from its
//! checkpoint file, with no copy of its state in memory, and the chunks a
//! joiner fetches make a checkpoint file.
//!
//! The parameters are under the model's own tensor names, the momentum under
//! `outer_momentum.<name>`. Tensors are laid out sorted by name; the metadata
//! key `starling.order` lists the names in the order of the node's flat
//! parameter vector, so a file reads back without the model. The bytes are a
//! function of the state and the layout alone (the header's keys in a fixed
//! order), so honest nodes at one state serve one root.

use std::{
    collections::BTreeMap,
    io::{self, Write},
};

use crate::snapshot::ModelState;

#[cfg(target_endian = "big")]
compile_error!("state files are written as little-endian f32 straight from memory");

/// The prefix of the momentum's tensors in a state file.
pub const MOMENTUM_PREFIX: &str = "outer_momentum.";
/// Metadata: the tensor names in the order of the flat vector.
pub const ORDER_KEY: &str = "starling.order";
/// Metadata: what the file is (`state/1`, or another kind of file a node writes).
pub const FORMAT_KEY: &str = "starling.format";
/// Metadata: the round of the state.
pub const ROUND_KEY: &str = "starling.round";
/// Metadata: the state's lineage, as hex.
pub const LINEAGE_KEY: &str = "starling.lineage";
/// The format of a state file.
pub const STATE_FORMAT: &str = "state/1";

/// The most bytes a state file's header may take beyond the values: its
/// length, metadata and each tensor's name, shape and place (a 124M-parameter
/// GPT-2 takes about 40 KiB).
pub const MAX_HEADER_BYTES: usize = 1 << 20;

/// Why bytes are not a state file of the model.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a state file of this model: {0}")]
pub struct StateFileError(pub String);

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

    /// One tensor `params` of `len` values: for a model whose names are not known.
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

    /// The metadata value of [`ORDER_KEY`].
    pub fn order(&self) -> String {
        let names: Vec<&str> = self.tensors.iter().map(|(n, _)| n.as_str()).collect();
        serde_json::to_string(&names).expect("strings serialize")
    }

    /// `flat` cut into the layout's tensors, named with `prefix`.
    pub fn cut<'a>(&'a self, prefix: &str, flat: &'a [f32]) -> Vec<(String, &'a [usize], &'a [f32])> {
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

/// Writes the state file of `state` in `layout` to `out`. The layout must be
/// of the state's length (a state of another length is written flat).
pub fn write_state(layout: &Layout, state: &ModelState, out: &mut dyn Write) -> io::Result<()> {
    let flat;
    let layout = if layout.len() == state.params.len() {
        layout
    } else {
        flat = Layout::flat(state.params.len());
        &flat
    };
    if state.momentum.len() != state.params.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} momentum values for {} parameters", state.momentum.len(), state.params.len()),
        ));
    }
    let mut tensors = layout.cut("", &state.params);
    tensors.extend(layout.cut(MOMENTUM_PREFIX, &state.momentum));
    let metadata = BTreeMap::from([
        (FORMAT_KEY, STATE_FORMAT.to_string()),
        (ROUND_KEY, state.round.to_string()),
        (LINEAGE_KEY, state.lineage.iter().map(|b| format!("{b:02x}")).collect()),
        (ORDER_KEY, layout.order()),
    ]);
    write_safetensors(out, tensors, &metadata)
}

/// The state file of `state` in `layout`, in memory (for tests and the simulator;
/// a node streams it to disk with [`write_state`]).
pub fn encode_state(layout: &Layout, state: &ModelState) -> Vec<u8> {
    let mut out = Vec::with_capacity(state.params.len() * 8 + 1024);
    write_state(layout, state, &mut out).expect("a Vec takes every byte and the shapes match");
    out
}

/// The safetensors format: an 8-byte little-endian header length, a JSON header
/// padded with spaces to a multiple of 8, then the tensors' bytes. Written
/// here rather than by `safetensors::serialize` so that it streams out
/// without a copy of the state in memory, and so that its bytes (the
/// metadata's order included) are the same for the same values.
pub fn write_safetensors(
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

/// The round and lineage a state file's header names, read from its first
/// bytes alone (the header), without its tensors.
pub fn read_round_and_lineage(header: &[u8]) -> Result<(u64, [u8; 32]), StateFileError> {
    let len = header.get(..8).ok_or_else(|| bad("shorter than its header length"))?;
    let len = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    if len > MAX_HEADER_BYTES as u64 {
        return Err(bad(format!("a header of {len} bytes, over the limit of {MAX_HEADER_BYTES}")));
    }
    let len = len as usize;
    let json = header.get(8..8usize.saturating_add(len)).ok_or_else(|| bad("the header is cut short"))?;
    let value: serde_json::Value = serde_json::from_slice(json).map_err(|e| bad(format!("header: {e}")))?;
    let meta = value.get("__metadata__").ok_or_else(|| bad("no metadata"))?;
    let get = |key: &str| {
        meta.get(key).and_then(|v| v.as_str()).ok_or_else(|| bad(format!("metadata `{key}` is missing")))
    };
    if get(FORMAT_KEY)? != STATE_FORMAT {
        return Err(bad(format!("format is `{}`, expected `{STATE_FORMAT}`", get(FORMAT_KEY)?)));
    }
    let round = get(ROUND_KEY)?.parse().map_err(|_| bad("the round is not a number"))?;
    Ok((round, parse_hex32(get(LINEAGE_KEY)?)?))
}

/// The state a state file holds, for a model of `count` values.
pub fn decode_state(bytes: &[u8], count: usize) -> Result<ModelState, StateFileError> {
    let (round, lineage) = read_round_and_lineage(bytes)?;
    let (file, order) = open(bytes, STATE_FORMAT)?;
    let params = gather(&file, "", &order, count)?;
    let momentum = gather(&file, MOMENTUM_PREFIX, &order, count)?;
    Ok(ModelState { round, lineage, params, momentum })
}

/// The values of a safetensors file of format `format` (other than a state
/// file: a node's residual), for a model of `count` values.
pub fn decode_values(bytes: &[u8], format: &str, count: usize) -> Result<Vec<f32>, StateFileError> {
    let (file, order) = open(bytes, format)?;
    gather(&file, "", &order, count)
}

/// The file, checked to be of `format`, and its tensor names in the flat order.
fn open<'a>(
    bytes: &'a [u8],
    format: &str,
) -> Result<(safetensors::SafeTensors<'a>, Vec<String>), StateFileError> {
    let file =
        safetensors::SafeTensors::deserialize(bytes).map_err(|e| bad(format!("not safetensors: {e}")))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| bad(e.to_string()))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get(FORMAT_KEY).map(String::as_str) != Some(format) {
        return Err(bad(format!("not a `{format}` file")));
    }
    let order = meta.get(ORDER_KEY).ok_or_else(|| bad(format!("metadata `{ORDER_KEY}` is missing")))?;
    let order: Vec<String> = serde_json::from_str(order).map_err(|e| bad(format!("order: {e}")))?;
    Ok((file, order))
}

fn gather(
    file: &safetensors::SafeTensors,
    prefix: &str,
    order: &[String],
    count: usize,
) -> Result<Vec<f32>, StateFileError> {
    let mut out = Vec::with_capacity(count);
    for name in order {
        let name = format!("{prefix}{name}");
        let view = file.tensor(&name).map_err(|_| bad(format!("tensor `{name}` is missing")))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(bad(format!("tensor `{name}` is {:?}, not F32", view.dtype())));
        }
        if out.len() + view.data().len() / 4 > count {
            return Err(bad(format!("the file holds more than the model's {count} values")));
        }
        out.extend(view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))));
    }
    if out.len() != count {
        return Err(bad(format!("the file holds {} values, the model has {count}", out.len())));
    }
    Ok(out)
}

fn parse_hex32(hex: &str) -> Result<[u8; 32], StateFileError> {
    let wrong = || bad(format!("`{hex}` is not 32 bytes of hex"));
    if hex.len() != 64 {
        return Err(wrong());
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(wrong)?, 16).map_err(|_| wrong())?;
    }
    Ok(out)
}

fn bad(reason: impl Into<String>) -> StateFileError {
    StateFileError(reason.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout::new(vec![("l00.weight".into(), vec![2, 2]), ("l00.bias".into(), vec![2])]).unwrap()
    }

    fn state() -> ModelState {
        let mut s = ModelState::initial((0..6).map(|i| i as f32 - 2.5).collect());
        s.round = 9;
        s.lineage = [3; 32];
        s.momentum = vec![0.25; 6];
        s
    }

    #[test]
    fn a_state_survives_its_file_in_the_flat_order() {
        let bytes = encode_state(&layout(), &state());
        assert_eq!(decode_state(&bytes, 6).unwrap(), state());
        assert_eq!(read_round_and_lineage(&bytes).unwrap(), (9, [3; 32]));
        // candle and PyTorch see the model's names.
        let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(file.tensor("l00.bias").unwrap().shape(), &[2]);
        assert_eq!(file.tensor("outer_momentum.l00.weight").unwrap().shape(), &[2, 2]);
    }

    #[test]
    fn the_same_state_makes_the_same_bytes_and_another_state_others() {
        assert_eq!(encode_state(&layout(), &state()), encode_state(&layout(), &state()));
        let mut other = state();
        other.round = 10;
        assert_ne!(encode_state(&layout(), &state()), encode_state(&layout(), &other));
    }

    #[test]
    fn a_file_of_the_wrong_model_or_kind_is_refused_with_the_reason() {
        let bytes = encode_state(&layout(), &state());
        assert!(decode_state(&bytes, 7).unwrap_err().to_string().contains("the model has 7"));
        assert!(decode_values(&bytes, "residual/1", 6).unwrap_err().to_string().contains("residual/1"));
        assert!(decode_state(&bytes[..20], 6).is_err());
        assert!(decode_state(&[0xff; 16], 6).is_err());
    }
}
