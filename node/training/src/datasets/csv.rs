//! CSV files of numeric features and an integer label column; the header row is
//! optional (a first row with a non-numeric cell is taken as one).

use std::path::Path;

use crate::data::{DataError, Dataset};

/// Loads `path`, labels from `label_column` (the last column when `None`).
pub fn load(path: &Path, label_column: Option<usize>, classes: usize) -> Result<Dataset, DataError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| DataError::Io { path: path.to_path_buf(), reason: e.to_string() })?;
    let bad = |reason: String| DataError::BadFile { path: path.to_path_buf(), reason };
    let mut rows = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).peekable();
    if let Some((_, first)) = rows.peek() {
        if first.split(',').any(|c| c.trim().parse::<f64>().is_err()) {
            rows.next();
        }
    }
    let (mut features, mut labels) = (Vec::new(), Vec::new());
    let mut width = None;
    for (line, row) in rows {
        let cells: Vec<&str> = row.split(',').map(str::trim).collect();
        let w = *width.get_or_insert(cells.len());
        if cells.len() != w {
            return Err(bad(format!(
                "row {} has {} cells, the first data row has {w}",
                line + 1,
                cells.len()
            )));
        }
        let label_at = label_column.unwrap_or(w - 1);
        if label_at >= w || w < 2 {
            return Err(bad(format!(
                "label column {label_at} is not among the {w} columns (numbered from 0)"
            )));
        }
        for (col, cell) in cells.iter().enumerate() {
            if col == label_at {
                let label: u32 = cell.parse().map_err(|_| {
                    bad(format!("label `{cell}` at row {} column {col} is not a class number", line + 1))
                })?;
                if label as usize >= classes {
                    return Err(bad(format!(
                        "label {label} at row {} column {col} is not below the model's {classes} classes",
                        line + 1
                    )));
                }
                labels.push(label);
            } else {
                let v: f32 = cell.parse().ok().filter(|v: &f32| v.is_finite()).ok_or_else(|| {
                    bad(format!("non-numeric cell `{cell}` at row {} column {col}", line + 1))
                })?;
                features.push(v);
            }
        }
    }
    let Some(w) = width else { return Err(bad("no data rows".into())) };
    Ok(Dataset { features, labels, dim: w - 1, classes })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.csv");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn reads_with_and_without_a_header_and_any_label_column() {
        let (_d, p) = file("a,b,label\n1,2,0\n3.5,-4,1\n");
        let d = load(&p, None, 2).unwrap();
        assert_eq!((d.dim, d.labels.clone(), d.features.clone()), (2, vec![0, 1], vec![1.0, 2.0, 3.5, -4.0]));
        let (_d, p) = file("1,2,0\n0,3.5,-4\n");
        let d = load(&p, Some(0), 2).unwrap();
        assert_eq!((d.labels.clone(), d.features.clone()), (vec![1, 0], vec![2.0, 0.0, 3.5, -4.0]));
    }

    #[test]
    fn bad_cells_name_row_and_column() {
        let (_d, p) = file("1,2,0\n3,x,1\n");
        let err = load(&p, None, 2).unwrap_err().to_string();
        assert!(err.contains("d.csv") && err.contains("`x` at row 2 column 1"), "{err}");
        let (_d, p) = file("1,2,0\n3,1\n");
        assert!(load(&p, None, 2).unwrap_err().to_string().contains("row 2 has 2 cells"));
        let (_d, p) = file("1,2,5\n");
        assert!(load(&p, None, 2).unwrap_err().to_string().contains("label 5"));
        let (_d, p) = file("a,b\n");
        assert!(load(&p, None, 2).unwrap_err().to_string().contains("no data rows"));
    }
}
