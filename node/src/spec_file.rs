//! Spec files named on the command line (`--spec FILE`): read and validated
//! in one place for every subcommand, with errors that name the file and the flag.

use std::path::Path;

use anyhow::{Context, Result};
use starling_protocol::RunSpec;

/// Reads and validates a spec file; the error names the file.
pub fn load_spec(path: &Path) -> Result<RunSpec> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the spec file {} (--spec)", path.display()))?;
    RunSpec::from_toml(&text)
        .with_context(|| format!("the spec file {} (--spec) is not usable", path.display()))
}
