//! Text for the byte-level language model: one file, or every file under a
//! directory (sorted by path), concatenated as bytes.

use std::path::Path;

use crate::data::DataError;

/// The bytes of `path`.
pub fn load(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut bytes = Vec::new();
    for file in super::files_under(path)? {
        bytes.extend(
            std::fs::read(&file).map_err(|e| DataError::Io { path: file.clone(), reason: e.to_string() })?,
        );
    }
    if bytes.len() < 64 {
        return Err(DataError::BadFile {
            path: path.to_path_buf(),
            reason: format!("only {} bytes of text; the language model needs at least 64", bytes.len()),
        });
    }
    Ok(bytes)
}

/// A corpus built from the `.rs` and `.md` files under `root` (sorted by path,
/// skipping `target` and hidden directories), for reproducible LM figures.
pub fn corpus_from_sources(root: &Path) -> Result<Vec<u8>, DataError> {
    let mut out = Vec::new();
    for file in super::files_under(root)? {
        let hidden_or_target = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .components()
            .any(|c| c.as_os_str().to_str().is_some_and(|s| s.starts_with('.') || s == "target"));
        let wanted = file.extension().is_some_and(|e| e == "rs" || e == "md");
        if wanted && !hidden_or_target {
            out.extend(
                std::fs::read(&file)
                    .map_err(|e| DataError::Io { path: file.clone(), reason: e.to_string() })?,
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_is_read_in_path_order_and_short_text_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.txt"), "B".repeat(40)).unwrap();
        std::fs::write(dir.path().join("a.txt"), "A".repeat(40)).unwrap();
        let bytes = load(dir.path()).unwrap();
        assert_eq!(bytes.len(), 80);
        assert_eq!(bytes[0], b'A');
        let err = load(&dir.path().join("a.txt")).unwrap_err().to_string();
        assert!(err.contains("a.txt") && err.contains("40 bytes"), "{err}");
        assert!(load(&dir.path().join("missing")).unwrap_err().to_string().contains("missing"));
    }
}
