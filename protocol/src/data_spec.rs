//! Where a run's training data comes from (`synthetic`, `idx:DIR`, `csv:FILE`,
//! `text:PATH`) and how it is split across nodes (IID or Dirichlet over labels).

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};

/// A data source, written in specs and on the command line as one string.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DatasetKind {
    /// The built-in seeded classification task.
    Synthetic,
    /// A directory of MNIST-style IDX files, gzipped or not.
    Idx(String),
    /// A CSV file of numeric features and an integer label column
    /// (`csv:FILE` takes the last column; `csv:FILE,label=N` column N, from 0).
    Csv { path: String, label_column: Option<usize> },
    /// A text file, or a directory of them, read as bytes for the language model.
    Text(String),
}

/// Why a data source string is not usable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("data source `{given}` is not understood: {reason}; use synthetic, idx:DIR, csv:FILE[,label=N] or text:PATH")]
pub struct BadDatasetKind {
    pub given: String,
    pub reason: &'static str,
}

impl FromStr for DatasetKind {
    type Err = BadDatasetKind;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = |reason| BadDatasetKind { given: s.to_string(), reason };
        if s == "synthetic" {
            return Ok(DatasetKind::Synthetic);
        }
        let (scheme, rest) = s.split_once(':').ok_or_else(|| bad("no `scheme:` prefix"))?;
        if rest.is_empty() {
            return Err(bad("the path is empty"));
        }
        match scheme {
            "idx" => Ok(DatasetKind::Idx(rest.to_string())),
            "text" => Ok(DatasetKind::Text(rest.to_string())),
            "csv" => match rest.rsplit_once(",label=") {
                Some((path, col)) => {
                    let col = col.parse().map_err(|_| bad("label=N needs a column number"))?;
                    Ok(DatasetKind::Csv { path: path.to_string(), label_column: Some(col) })
                }
                None => Ok(DatasetKind::Csv { path: rest.to_string(), label_column: None }),
            },
            _ => Err(bad("unknown scheme")),
        }
    }
}

impl fmt::Display for DatasetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DatasetKind::Synthetic => write!(f, "synthetic"),
            DatasetKind::Idx(p) => write!(f, "idx:{p}"),
            DatasetKind::Csv { path, label_column: None } => write!(f, "csv:{path}"),
            DatasetKind::Csv { path, label_column: Some(c) } => write!(f, "csv:{path},label={c}"),
            DatasetKind::Text(p) => write!(f, "text:{p}"),
        }
    }
}

impl TryFrom<String> for DatasetKind {
    type Error = BadDatasetKind;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<DatasetKind> for String {
    fn from(k: DatasetKind) -> String {
        k.to_string()
    }
}

/// How the training data is split across nodes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Partition {
    /// Each node gets a uniform random share.
    #[default]
    Iid,
    /// Each class is split across nodes by proportions drawn from Dirichlet(α):
    /// small α gives each node a few classes.
    Dirichlet(f64),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_print_back() {
        for s in ["synthetic", "idx:/data/mnist", "csv:a.csv", "csv:a,b.csv,label=0", "text:corpus"] {
            assert_eq!(s.parse::<DatasetKind>().unwrap().to_string(), s);
        }
        assert_eq!(
            "csv:x.csv,label=2".parse::<DatasetKind>().unwrap(),
            DatasetKind::Csv { path: "x.csv".into(), label_column: Some(2) }
        );
        assert!("mnist".parse::<DatasetKind>().unwrap_err().to_string().contains("mnist"));
        assert!("idx:".parse::<DatasetKind>().is_err());
        assert!("csv:a,label=x".parse::<DatasetKind>().is_err());
    }
}
