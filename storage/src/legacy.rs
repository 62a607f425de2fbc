//! The datadir layout before checkpoint files: whole checkpoints (and the
//! residual beside the own delta) as checksummed records inside sled. Read
//! only to migrate a datadir on its first open by a newer node, or to inspect
//! one that was not yet migrated.

use starling_protocol::{wire, SignedDelta};

use crate::{checksum, CheckpointScan, CorruptCheckpoint};

/// The sled tree that held whole checkpoint records.
pub(crate) const CHECKPOINTS_TREE: &str = "checkpoints";
/// The outbox key that held the own delta with the residual inline.
pub(crate) const OUTBOX_KEY: &[u8] = b"own_delta";
const CHECKSUM_LEN: usize = 32;

fn split_checked<'a>(record: &'a [u8], what: &str) -> Result<&'a [u8], String> {
    if record.len() < CHECKSUM_LEN {
        return Err(format!("{what} is {} bytes, shorter than its checksum", record.len()));
    }
    let (sum, body) = record.split_at(CHECKSUM_LEN);
    if checksum(body).as_bytes() != sum {
        return Err(format!("{what} checksum mismatch (torn or corrupted write)"));
    }
    Ok(body)
}

/// The newest readable record of the old tree, newest first, as the old store read it.
pub(crate) fn scan(tree: &sled::Tree, param_count: usize) -> Result<CheckpointScan, sled::Error> {
    let mut skipped = Vec::new();
    for entry in tree.iter().rev() {
        let (key, record) = entry?;
        let round = key.as_ref().try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
        let decoded = split_checked(&record, "record").and_then(|body| {
            wire::decode_checkpoint(body, param_count * 12 + 1024, param_count).map_err(|e| e.to_string())
        });
        match decoded {
            Ok(checkpoint) if checkpoint.state.round == round => {
                return Ok(CheckpointScan { checkpoint: Some(checkpoint), skipped })
            }
            Ok(checkpoint) => skipped.push(CorruptCheckpoint {
                round,
                reason: format!("record claims round {}", checkpoint.state.round),
            }),
            Err(reason) => skipped.push(CorruptCheckpoint { round, reason }),
        }
    }
    Ok(CheckpointScan { checkpoint: None, skipped })
}

/// The own delta and residual of the old outbox record.
pub(crate) fn outbox(
    record: &[u8],
    param_count: usize,
    max_delta_bytes: usize,
) -> Result<(SignedDelta, Vec<f32>), String> {
    let body = split_checked(record, "outbox record")?;
    let limit = max_delta_bytes + param_count * 4 + 1024;
    wire::decode_outbox(body, limit, param_count).map_err(|e| e.to_string())
}

/// A record in the old format, for tests of the migration.
#[cfg(test)]
pub(crate) fn record(checkpoint: &starling_protocol::Checkpoint) -> Vec<u8> {
    let body = wire::encode_checkpoint(&checkpoint.state, &checkpoint.residual);
    let mut record = checksum(&body).as_bytes().to_vec();
    record.extend_from_slice(&body);
    record
}

/// An outbox record in the old format, for tests of the migration.
#[cfg(test)]
pub(crate) fn outbox_record(delta: &SignedDelta, residual: &[f32]) -> Vec<u8> {
    let body = wire::encode_outbox(delta, residual);
    let mut record = checksum(&body).as_bytes().to_vec();
    record.extend_from_slice(&body);
    record
}
