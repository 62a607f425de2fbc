//! The node's own delta, saved before it is published (the outbox): its sled
//! record, and the fsync of its file off the round's path.
//!
//! The record (checksum ‖ body) names the delta file and the residual file
//! saved with it by their checksums, and holds the delta's signed header. It
//! is flushed before the delta is published. The delta file is written and
//! renamed into place before the record, but fsynced after it, on a thread of
//! its own ([`Syncer`], one fsync at a time), so that a model-sized fsync is
//! not on the round's path (at 10⁸ parameters a dense delta is 400 MB: 1.5 s).
//! A kill -9 loses none of it (the kernel holds the file's pages). A machine
//! crash may tear the file; the record then still says which round the node
//! signed, and the restarted node sits that round out rather than sign it a
//! second time ([`UnreadableOutbox::signed`]).

use std::{path::PathBuf, sync::Mutex, thread::JoinHandle};

use starling_protocol::{delta::SignedHeader, wire, DeltaHeader, SignedDelta};

use crate::{files, Pointer, CHECKSUM_LEN};

/// The node's own delta as saved before it was published.
#[derive(Debug)]
pub struct SavedDelta {
    pub delta: SignedDelta,
    /// The residual its encoding left, when it was saved with it (see
    /// [`crate::Store::save_outbox`]); `Err` with the reason if its file is unreadable.
    pub residual: Result<Option<Vec<f32>>, String>,
}

/// An outbox that cannot be read back whole.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("{reason}")]
pub struct UnreadableOutbox {
    pub reason: String,
    /// The header of the delta the node signed, when the record was readable
    /// and only the delta's file was not (torn by a machine crash, or rotten):
    /// enough to never sign its round again.
    pub signed: Option<Box<DeltaHeader>>,
}

impl UnreadableOutbox {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), signed: None }
    }
}

/// The record for the delta file `pointer.state` (and residual) of `delta`.
pub(crate) fn encode_record(pointer: &Pointer, delta: &SignedDelta) -> Vec<u8> {
    let pointer = pointer.encode();
    let mut body = vec![pointer.len() as u8];
    body.extend_from_slice(&pointer);
    body.extend_from_slice(&wire::encode_announcement(&SignedHeader::of(delta)));
    let mut record = files::checksum(&body).to_vec();
    record.extend_from_slice(&body);
    record
}

/// A record's pointer and signed header; `None` if torn or corrupted. A record
/// written before the header was kept is the bare pointer (32 or 64 bytes,
/// where a body with a header is over a hundred).
pub(crate) fn decode_record(record: &[u8]) -> Option<(Pointer, Option<Box<DeltaHeader>>)> {
    let (sum, body) = record.split_at_checked(CHECKSUM_LEN)?;
    if files::checksum(body) != sum {
        return None;
    }
    if matches!(body.len(), 32 | 64) {
        return Some((Pointer::decode(body)?, None));
    }
    let (&len, rest) = body.split_first()?;
    let (pointer, header) = rest.split_at_checked(usize::from(len))?;
    Some((Pointer::decode(pointer)?, Some(Box::new(wire::decode_announcement(header).ok()?.header))))
}

/// Makes outbox files durable on a thread of their own, one at a time.
#[derive(Default)]
pub(crate) struct Syncer {
    pending: Mutex<Option<JoinHandle<()>>>,
}

impl Syncer {
    /// Fsyncs `path` and its directory once the fsync before it is done
    /// (waited for here: a round apart, it long is).
    pub(crate) fn sync_later(&self, path: PathBuf) {
        let mut pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(previous) = pending.take() {
            let _ = previous.join();
        }
        *pending = Some(std::thread::spawn(move || {
            // Gone already (a later delta replaced it): nothing to keep.
            if let Ok(file) = std::fs::File::open(&path) {
                let _ = file.sync_all();
            }
            if let Some(dir) = path.parent() {
                let _ = files::sync_dir(dir);
            }
        }));
    }

    /// Waits for the fsync in flight, if any.
    pub(crate) fn wait(&self) {
        let pending = self.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        if let Some(pending) = pending {
            let _ = pending.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_keeps_its_pointer_and_header_and_reads_the_older_kind() {
        let delta = crate::tests::delta(4);
        let pointer = Pointer { state: [1; 32], residual: Some([2; 32]) };
        let record = encode_record(&pointer, &delta);
        let (back, header) = decode_record(&record).unwrap();
        assert_eq!(
            (back.state, back.residual, header),
            (pointer.state, pointer.residual, Some(Box::new(delta.header)))
        );
        let mut torn = record.clone();
        torn.truncate(record.len() - 1);
        assert!(decode_record(&torn).is_none());
        // The record before the header was kept: checksum ‖ pointer.
        let bare = Pointer { state: [3; 32], residual: None }.encode();
        let mut old = files::checksum(&bare).to_vec();
        old.extend_from_slice(&bare);
        let (back, header) = decode_record(&old).unwrap();
        assert_eq!((back.state, back.residual, header), ([3; 32], None, None));
    }
}
