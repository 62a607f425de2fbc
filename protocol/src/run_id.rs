//! The identity of a run: the hash of its spec, carried by every topic,
//! protocol name and signed delta so that different runs never mix.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The hash of a run's spec. Topics, protocol names and every signed delta carry it,
/// so different runs never mix.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RunId(pub [u8; 32]);

impl RunId {
    /// A short hex prefix, enough to name topics and logs.
    pub fn short(&self) -> String {
        self.0[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl fmt::Display for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for RunId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RunId({})", self.short())
    }
}
