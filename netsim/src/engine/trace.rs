//! `NETSIM_NOTES=1`: a line on stderr for each engine note and each merge, with
//! the virtual time, the node and its round, for reading a seeded run's story.

use starling_protocol::{engine::Note, round::CloseReason, SignedDelta};

use super::{Engine, MS};

/// Whether the run traces (read once, when the run starts).
pub(super) fn wanted() -> bool {
    std::env::var_os("NETSIM_NOTES").is_some()
}

impl Engine<'_> {
    pub(super) fn trace_note(&self, node: usize, note: &Note) {
        if self.trace {
            eprintln!("{} node {node} r{}: {note:?}", self.now / MS, self.nodes[node].state.round);
        }
    }

    /// Who was merged, each with the first byte of the base it was trained from.
    pub(super) fn trace_merge(&self, node: usize, round: u64, deltas: &[SignedDelta], reason: CloseReason) {
        if self.trace {
            let senders: Vec<String> = deltas
                .iter()
                .map(|d| format!("{:?}:{:02x}", self.index_of(&d.header.sender), d.header.base[0]))
                .collect();
            let base = self.nodes[node].state.lineage[0];
            eprintln!(
                "{} node {node} r{round}: merged {senders:?} ({reason:?}) into {base:02x}",
                self.now / MS
            );
        }
    }
}
