//! MNIST-style IDX files (`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`,
//! `t10k-…` for the test split), gzipped or not: read, checked and written.

use std::{
    io::{Read, Write},
    path::{Path, PathBuf},
};

use flate2::{read::GzDecoder, write::GzEncoder, Compression};

use crate::data::{DataError, Dataset};

/// The train split and, when the directory has one, the test split.
pub struct IdxSplit {
    pub train: Dataset,
    pub test: Option<Dataset>,
}

/// Loads the image/label pairs of `dir`; pixels scaled to `[0, 1]`.
pub fn load_dir(dir: &Path, classes: usize) -> Result<IdxSplit, DataError> {
    let files = super::files_under(dir)?;
    let find = |split: &[&str], what: &str| -> Option<PathBuf> {
        files
            .iter()
            .find(|p| {
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("").to_ascii_lowercase();
                split.iter().any(|s| name.starts_with(s)) && name.contains(what) && name.contains("idx")
            })
            .cloned()
    };
    let pair = |split: &[&str]| -> Result<Option<Dataset>, DataError> {
        match (find(split, "images"), find(split, "labels")) {
            (Some(images), Some(labels)) => Ok(Some(load_pair(&images, &labels, classes)?)),
            (None, None) => Ok(None),
            (Some(found), None) | (None, Some(found)) => Err(DataError::BadFile {
                path: found,
                reason: "its partner file (images or labels of the same split) is missing".into(),
            }),
        }
    };
    let train = pair(&["train"])?;
    let test = pair(&["t10k", "test"])?;
    match (train, test) {
        (Some(train), test) => Ok(IdxSplit { train, test }),
        (None, Some(only)) => Ok(IdxSplit { train: only, test: None }),
        (None, None) => Err(DataError::Io {
            path: dir.to_path_buf(),
            reason:
                "no IDX files found; expected train-images-idx3-ubyte[.gz] and train-labels-idx1-ubyte[.gz]"
                    .into(),
        }),
    }
}

/// One images file and its labels file.
pub fn load_pair(images: &Path, labels: &Path, classes: usize) -> Result<Dataset, DataError> {
    let (image_dims, pixels) = read_idx(images)?;
    let (label_dims, label_bytes) = read_idx(labels)?;
    let bad = |path: &Path, reason: String| DataError::BadFile { path: path.to_path_buf(), reason };
    if image_dims.len() < 2 {
        return Err(bad(images, format!("images need at least 2 dimensions, found {}", image_dims.len())));
    }
    if label_dims.len() != 1 {
        return Err(bad(labels, format!("labels need 1 dimension, found {}", label_dims.len())));
    }
    if image_dims[0] != label_dims[0] {
        return Err(bad(
            labels,
            format!("{} labels for {} images in {}", label_dims[0], image_dims[0], images.display()),
        ));
    }
    if let Some((i, &l)) = label_bytes.iter().enumerate().find(|(_, &l)| l as usize >= classes) {
        return Err(bad(
            labels,
            format!("label {l} of sample {i} is not below the model's {classes} classes"),
        ));
    }
    Ok(Dataset {
        features: pixels.iter().map(|&p| p as f32 / 255.0).collect(),
        labels: label_bytes.iter().map(|&l| l as u32).collect(),
        dim: image_dims[1..].iter().product(),
        classes,
    })
}

/// The dimensions and unsigned-byte payload of an IDX file.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>), DataError> {
    let raw =
        std::fs::read(path).map_err(|e| DataError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
    let bad = |reason: String| DataError::BadFile { path: path.to_path_buf(), reason };
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(&raw[..]).read_to_end(&mut out).map_err(|e| bad(format!("bad gzip stream: {e}")))?;
        out
    } else {
        raw
    };
    if bytes.len() < 4 || bytes[0] != 0 || bytes[1] != 0 {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        return Err(bad(format!("bad magic number {} (an IDX file starts 00 00 08 NDIMS)", head.join(" "))));
    }
    if bytes[2] != 0x08 {
        return Err(bad(format!(
            "element type 0x{:02x} is not supported; only unsigned bytes (0x08)",
            bytes[2]
        )));
    }
    let ndims = bytes[3] as usize;
    let header = 4 + 4 * ndims;
    if ndims == 0 || bytes.len() < header {
        return Err(bad(format!(
            "truncated header: {ndims} dimensions need {header} bytes, file has {}",
            bytes.len()
        )));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize)
        .collect();
    let expected = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| bad("dimensions overflow".into()))?;
    let got = bytes.len() - header;
    if got != expected {
        let what = if got < expected { "truncated" } else { "has trailing bytes" };
        return Err(bad(format!("{what}: dimensions {dims:?} need {expected} data bytes, found {got}")));
    }
    Ok((dims, bytes[header..].to_vec()))
}

/// Writes an unsigned-byte IDX file, gzipped when the name ends in `.gz`.
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8]) -> Result<(), DataError> {
    let mut bytes = vec![0, 0, 0x08, dims.len() as u8];
    for &d in dims {
        bytes.extend_from_slice(&(d as u32).to_be_bytes());
    }
    bytes.extend_from_slice(data);
    let io = |e: std::io::Error| DataError::Io { path: path.to_path_buf(), reason: e.to_string() };
    if path.extension().is_some_and(|e| e == "gz") {
        let mut enc = GzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(&bytes).map_err(io)?;
        bytes = enc.finish().map_err(io)?;
    }
    std::fs::write(path, bytes).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, prefix: &str, n: usize, gz: bool) {
        let ext = if gz { ".gz" } else { "" };
        let pixels: Vec<u8> = (0..n * 4).map(|i| (i * 37 % 256) as u8).collect();
        let labels: Vec<u8> = (0..n).map(|i| (i % 3) as u8).collect();
        write_idx(&dir.join(format!("{prefix}-images-idx3-ubyte{ext}")), &[n, 2, 2], &pixels).unwrap();
        write_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte{ext}")), &[n], &labels).unwrap();
    }

    #[test]
    fn reads_gzipped_and_plain_train_and_test_splits() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "train", 10, true);
        write_pair(dir.path(), "t10k", 4, false);
        let split = load_dir(dir.path(), 3).unwrap();
        assert_eq!(split.train.len(), 10);
        assert_eq!(split.train.dim, 4);
        assert_eq!(split.train.labels[..4], [0, 1, 2, 0]);
        assert_eq!(split.train.row(0)[1], 37.0 / 255.0);
        assert_eq!(split.test.unwrap().len(), 4);
    }

    #[test]
    fn only_a_train_pair_has_no_test_split() {
        let dir = tempfile::tempdir().unwrap();
        write_pair(dir.path(), "train", 6, false);
        assert!(load_dir(dir.path(), 3).unwrap().test.is_none());
    }

    #[test]
    fn bad_files_name_the_file_and_the_fault() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x-idx3");
        std::fs::write(&p, [1, 2, 3, 4, 5]).unwrap();
        let err = read_idx(&p).unwrap_err().to_string();
        assert!(err.contains("x-idx3") && err.contains("bad magic number 01 02 03 04"), "{err}");
        std::fs::write(&p, [0, 0, 8, 1, 0, 0, 0, 9, 1, 2]).unwrap();
        let err = read_idx(&p).unwrap_err().to_string();
        assert!(err.contains("truncated") && err.contains("need 9"), "{err}");

        write_pair(dir.path(), "train", 6, false);
        write_idx(&dir.path().join("train-labels-idx1-ubyte"), &[5], &[0; 5]).unwrap();
        let err = load_dir(dir.path(), 3).err().unwrap().to_string();
        assert!(err.contains("train-labels") && err.contains("5 labels for 6 images"), "{err}");
        write_idx(&dir.path().join("train-labels-idx1-ubyte"), &[6], &[0, 1, 7, 0, 0, 0]).unwrap();
        let err = load_dir(dir.path(), 3).err().unwrap().to_string();
        assert!(err.contains("label 7 of sample 2"), "{err}");
        std::fs::remove_file(dir.path().join("train-labels-idx1-ubyte")).unwrap();
        let err = load_dir(dir.path(), 3).err().unwrap().to_string();
        assert!(err.contains("partner"), "{err}");
    }
}
