//! The one place where Starling encodes and decodes bytes with bincode.
//!
//! Every decode takes the caller's byte limit and refuses longer input before
//! bincode sees it, and decodes by borrowing from the input: byte fields are
//! `&[u8]` slices checked against the bytes actually present, so a length
//! prefix inside hostile input can never make the decoder allocate. Decoding
//! untrusted bytes returns an error, never panics, and never leaves trailing
//! bytes unread.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

pub mod pool;
pub(crate) mod primitives;
use pool::BufferPool;
use primitives::CONFIG;
pub use primitives::{
    decode, encode, extend_le_bytes, f32s_to_le_bytes, le_bytes_to_f32s, WireError, MAX_MESSAGE_BYTES,
};

use crate::accountability::{EquivocationProof, ProofError, MAX_PROOF_BYTES};
use crate::chunks::{StateManifest, StateOffer, MAX_CHUNKS, MAX_SYNC_EXPECTED};
use crate::delta::{DeltaHeader, DeltaRules, Refusal, SignedDelta, SignedHeader};
use crate::keys::PublicKey;
use crate::leave::{LeaveNotice, LeaveRefusal, MAX_LEAVE_BYTES};
use crate::run_id::RunId;
use crate::snapshot::{Checkpoint, ModelState, SyncReply, MAX_SYNC_DELTAS};

/// The largest message any Starling decoder accepts, whatever the caller's limit.
/// A [`SignedDelta`] as it travels: the payload and signature borrow the input.
#[derive(Serialize, Deserialize)]
struct SignedDeltaWire<'a> {
    header: DeltaHeader,
    #[serde(borrow, with = "serde_bytes")]
    payload: &'a [u8],
    #[serde(borrow, with = "serde_bytes")]
    signature: &'a [u8],
}

/// Encodes a signed delta for the wire or the delta log, into a buffer sized
/// for it up front (a dense delta is as large as the model; a growing buffer
/// would reach twice that).
pub fn encode_delta(delta: &SignedDelta) -> Vec<u8> {
    let wire = SignedDeltaWire {
        header: delta.header.clone(),
        payload: &delta.payload,
        signature: &delta.signature,
    };
    let mut out = Vec::with_capacity(delta.payload.len() + DELTA_FRAMING_BYTES);
    bincode::serde::encode_into_std_write(&wire, &mut out, CONFIG).expect("starling types always encode");
    out
}

/// [`encode_delta`] whose payload then lives only in the encoding: the
/// returned delta's payload is a slice of the returned bytes, so a node holds
/// its own delta once, not once to merge and once to send.
pub fn encode_delta_shared(delta: SignedDelta) -> (SignedDelta, Bytes) {
    let bytes = Bytes::from(encode_delta(&delta));
    // The encoding ends with the payload, the signature's length (one byte: 64) and the signature.
    let end = bytes.len() - 1 - delta.signature.len();
    let payload = bytes.slice(end - delta.payload.len()..end);
    debug_assert_eq!(payload, delta.payload, "the payload is not where the encoding keeps it");
    (SignedDelta { payload, ..delta }, bytes)
}

/// Signs a delta whose payload `write` appends straight into its wire
/// encoding (exactly `payload_len` bytes): the same delta and bytes as
/// [`encode_delta_shared`] of [`SignedDelta::sign`], without a buffer and a
/// copy of the payload of its own (a dense delta is as large as the model).
/// The header is encoded first with an empty payload hash, then again with
/// the hash over what was written; its length does not depend on the hash.
/// With a `pool`, the bytes are written into the buffer it keeps and go back
/// to it when their last clone is dropped.
#[allow(clippy::too_many_arguments)]
pub fn sign_delta_encoded(
    pool: Option<&Arc<BufferPool>>,
    key: &ed25519_dalek::SigningKey,
    run_id: RunId,
    round: u64,
    base: [u8; 32],
    samples: u64,
    codec: crate::Codec,
    payload_len: usize,
    write: impl FnOnce(&mut Vec<u8>),
) -> (SignedDelta, Bytes) {
    use ed25519_dalek::Signer;
    let mut header = DeltaHeader::unhashed(key, run_id, round, base, samples, codec, payload_len);
    let capacity = payload_len + DELTA_FRAMING_BYTES;
    let mut out = pool.map_or_else(|| Vec::with_capacity(capacity), |pool| pool.take(capacity));
    bincode::serde::encode_into_std_write(&header, &mut out, CONFIG).expect("starling types always encode");
    let header_len = out.len();
    // A byte string's length prefix, as `serde_bytes` writes it.
    bincode::serde::encode_into_std_write(header.payload_len, &mut out, CONFIG).expect("a u64 encodes");
    let start = out.len();
    write(&mut out);
    assert_eq!(out.len() - start, payload_len, "the payload writer wrote another length than announced");
    header.payload_hash = crate::delta::payload_hash(&out[start..]);
    let head = encode_header(&header);
    assert_eq!(head.len(), header_len, "a header's length does not depend on its payload hash");
    out[..header_len].copy_from_slice(&head);
    let signature = key.sign(&crate::delta::header_digest(&header)).to_bytes();
    bincode::serde::encode_into_std_write(serde_bytes::Bytes::new(&signature), &mut out, CONFIG)
        .expect("a signature encodes");
    let bytes = match pool {
        Some(pool) => pool.share(out),
        None => Bytes::from(out),
    };
    let payload = bytes.slice(start..start + payload_len);
    (SignedDelta { header, payload, signature }, bytes)
}

/// Room for a signed delta's header, signature and length prefixes: enough
/// that [`encode_delta`] never regrows its buffer.
const DELTA_FRAMING_BYTES: usize = 512;

/// Decodes a signed delta of at most `limit` bytes. This checks the shape only;
/// [`SignedDelta::verify`] checks what it claims.
pub fn decode_delta(bytes: &[u8], limit: usize) -> Result<SignedDelta, WireError> {
    delta_from_wire(decode(bytes, limit)?)
}

fn delta_from_wire(wire: SignedDeltaWire) -> Result<SignedDelta, WireError> {
    let signature: [u8; 64] = wire
        .signature
        .try_into()
        .map_err(|_| WireError::Malformed(format!("signature is {} bytes, not 64", wire.signature.len())))?;
    Ok(SignedDelta { header: wire.header, payload: Bytes::copy_from_slice(wire.payload), signature })
}

/// A [`SignedHeader`] as it travels: the signature borrows the input.
#[derive(Serialize, Deserialize)]
struct SignedHeaderWire<'a> {
    header: DeltaHeader,
    #[serde(borrow, with = "serde_bytes")]
    signature: &'a [u8],
}

/// The largest announcement: a signed header.
pub const MAX_ANNOUNCEMENT_BYTES: usize = 1024;

/// Encodes the announcement of a delta whose payload is fetched apart: its
/// header and signature.
pub fn encode_announcement(signed: &SignedHeader) -> Vec<u8> {
    encode(&SignedHeaderWire { header: signed.header.clone(), signature: &signed.signature })
}

/// Decodes an announcement. This checks the shape only; [`SignedHeader::validate`] checks what it claims.
pub fn decode_announcement(bytes: &[u8]) -> Result<SignedHeader, WireError> {
    signed_header_from_wire(decode(bytes, MAX_ANNOUNCEMENT_BYTES)?)
}

fn signed_header_from_wire(w: SignedHeaderWire) -> Result<SignedHeader, WireError> {
    let signature = w
        .signature
        .try_into()
        .map_err(|_| WireError::Malformed(format!("signature is {} bytes, not 64", w.signature.len())))?;
    Ok(SignedHeader { header: w.header, signature })
}

/// An [`EquivocationProof`] as it travels.
#[derive(Serialize, Deserialize)]
struct ProofWire<'a> {
    #[serde(borrow)]
    a: SignedHeaderWire<'a>,
    #[serde(borrow)]
    b: SignedHeaderWire<'a>,
}

/// Encodes an equivocation proof for the wire or a ban record.
pub fn encode_proof(proof: &EquivocationProof) -> Vec<u8> {
    fn part(s: &SignedHeader) -> SignedHeaderWire<'_> {
        SignedHeaderWire { header: s.header.clone(), signature: &s.signature }
    }
    encode(&ProofWire { a: part(&proof.a), b: part(&proof.b) })
}

/// Decodes an equivocation proof of at most `limit` bytes. This checks the shape
/// only; [`EquivocationProof::verify`] checks what it claims.
pub fn decode_proof(bytes: &[u8], limit: usize) -> Result<EquivocationProof, WireError> {
    let wire: ProofWire = decode(bytes, limit)?;
    let part = signed_header_from_wire;
    Ok(EquivocationProof { a: part(wire.a)?, b: part(wire.b)? })
}

/// A [`LeaveNotice`] as it travels: the signature borrows the input.
#[derive(Serialize, Deserialize)]
struct LeaveNoticeWire<'a> {
    run_id: RunId,
    sender: PublicKey,
    from: u64,
    #[serde(borrow, with = "serde_bytes")]
    signature: &'a [u8],
}

/// Encodes a leave notice for the wire.
pub fn encode_leave(notice: &LeaveNotice) -> Vec<u8> {
    encode(&LeaveNoticeWire {
        run_id: notice.run_id,
        sender: notice.sender,
        from: notice.from,
        signature: &notice.signature,
    })
}

/// Decodes a leave notice of at most `limit` bytes. This checks the shape
/// only; [`LeaveNotice::verify`] checks what it claims.
pub fn decode_leave(bytes: &[u8], limit: usize) -> Result<LeaveNotice, WireError> {
    let wire: LeaveNoticeWire = decode(bytes, limit)?;
    let signature = wire
        .signature
        .try_into()
        .map_err(|_| WireError::Malformed(format!("signature is {} bytes, not 64", wire.signature.len())))?;
    Ok(LeaveNotice { run_id: wire.run_id, sender: wire.sender, from: wire.from, signature })
}

/// The bytes a delta header's digest is computed over.
pub fn encode_header(header: &DeltaHeader) -> Vec<u8> {
    encode(header)
}

/// A [`ModelState`] as it travels and is stored: vectors as little-endian bytes.
#[derive(Serialize, Deserialize)]
struct ModelStateWire<'a> {
    round: u64,
    lineage: [u8; 32],
    #[serde(borrow, with = "serde_bytes")]
    params: &'a [u8],
    #[serde(borrow, with = "serde_bytes")]
    momentum: &'a [u8],
}

fn state_from_wire(wire: &ModelStateWire, param_count: usize) -> Result<ModelState, WireError> {
    let expected = param_count * 4;
    if wire.params.len() != expected || wire.momentum.len() != expected {
        return Err(WireError::Malformed(format!(
            "state holds {} parameter bytes and {} momentum bytes, expected {expected} each",
            wire.params.len(),
            wire.momentum.len()
        )));
    }
    Ok(ModelState {
        round: wire.round,
        lineage: wire.lineage,
        params: le_bytes_to_f32s(wire.params),
        momentum: le_bytes_to_f32s(wire.momentum),
    })
}

/// A [`Checkpoint`] as it is stored.
#[derive(Serialize, Deserialize)]
struct CheckpointWire<'a> {
    #[serde(borrow)]
    state: ModelStateWire<'a>,
    #[serde(borrow, with = "serde_bytes")]
    residual: &'a [u8],
}

/// Encodes a checkpoint: a state and the node's residual (empty for none).
pub fn encode_checkpoint(state: &ModelState, residual: &[f32]) -> Vec<u8> {
    let params = f32s_to_le_bytes(&state.params);
    let momentum = f32s_to_le_bytes(&state.momentum);
    let residual = f32s_to_le_bytes(residual);
    encode(&CheckpointWire {
        state: ModelStateWire {
            round: state.round,
            lineage: state.lineage,
            params: &params,
            momentum: &momentum,
        },
        residual: &residual,
    })
}

/// Decodes a checkpoint of a model of `param_count` parameters; the residual is
/// empty or of the model's length.
pub fn decode_checkpoint(bytes: &[u8], limit: usize, param_count: usize) -> Result<Checkpoint, WireError> {
    let wire: CheckpointWire = decode(bytes, limit)?;
    let state = state_from_wire(&wire.state, param_count)?;
    if !wire.residual.is_empty() && wire.residual.len() != param_count * 4 {
        return Err(WireError::Malformed(format!(
            "residual holds {} bytes, expected 0 or {}",
            wire.residual.len(),
            param_count * 4
        )));
    }
    Ok(Checkpoint { state, residual: le_bytes_to_f32s(wire.residual) })
}

/// A [`SyncReply`] as it travels.
#[derive(Serialize, Deserialize)]
struct SyncReplyWire<'a> {
    #[serde(borrow)]
    state: ModelStateWire<'a>,
    expected_from: u64,
    #[serde(borrow)]
    deltas: Vec<SignedDeltaWire<'a>>,
}

/// Encodes a sync reply.
pub fn encode_sync_reply(reply: &SyncReply) -> Vec<u8> {
    let params = f32s_to_le_bytes(&reply.state.params);
    let momentum = f32s_to_le_bytes(&reply.state.momentum);
    encode(&SyncReplyWire {
        state: ModelStateWire {
            round: reply.state.round,
            lineage: reply.state.lineage,
            params: &params,
            momentum: &momentum,
        },
        expected_from: reply.expected_from,
        deltas: reply
            .deltas
            .iter()
            .take(MAX_SYNC_DELTAS)
            .map(|d| SignedDeltaWire {
                header: d.header.clone(),
                payload: &d.payload,
                signature: &d.signature,
            })
            .collect(),
    })
}

/// Decodes a sync reply of at most `limit` bytes for a model of `param_count`
/// parameters. The deltas it carries still need [`SignedDelta::validate`].
pub fn decode_sync_reply(bytes: &[u8], limit: usize, param_count: usize) -> Result<SyncReply, WireError> {
    let wire: SyncReplyWire = decode(bytes, limit)?;
    if wire.deltas.len() > MAX_SYNC_DELTAS {
        return Err(WireError::Malformed(format!(
            "sync reply carries {} deltas, over {MAX_SYNC_DELTAS}",
            wire.deltas.len()
        )));
    }
    let state = state_from_wire(&wire.state, param_count)?;
    let mut deltas = Vec::with_capacity(wire.deltas.len());
    for d in wire.deltas {
        deltas.push(delta_from_wire(d)?);
    }
    Ok(SyncReply { state, expected_from: wire.expected_from, deltas })
}

/// A node's own delta of its current round and the residual left after encoding
/// it, as stored before the delta is published (so a restart republishes the
/// same delta instead of signing a different one for the same round).
#[derive(Serialize, Deserialize)]
struct OutboxWire<'a> {
    #[serde(borrow)]
    delta: SignedDeltaWire<'a>,
    #[serde(borrow, with = "serde_bytes")]
    residual: &'a [u8],
}

/// Encodes a node's own published delta and its residual after encoding.
pub fn encode_outbox(delta: &SignedDelta, residual: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(delta.payload.len() + residual.len() * 4 + DELTA_FRAMING_BYTES);
    write_outbox(delta, residual, &mut out).expect("writing to memory cannot fail");
    out
}

/// [`encode_outbox`] straight into `out` (a file), with no copy of the payload.
pub fn write_outbox(
    delta: &SignedDelta,
    residual: &[f32],
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let residual = f32s_to_le_bytes(residual);
    let wire = OutboxWire {
        delta: SignedDeltaWire {
            header: delta.header.clone(),
            payload: &delta.payload,
            signature: &delta.signature,
        },
        residual: &residual,
    };
    bincode::serde::encode_into_std_write(&wire, out, CONFIG).map_err(|e| match e {
        bincode::error::EncodeError::Io { inner, .. } => inner,
        other => std::io::Error::other(other.to_string()),
    })?;
    Ok(())
}

/// Decodes what [`encode_outbox`] wrote, for a model of `param_count` parameters.
pub fn decode_outbox(
    bytes: &[u8],
    limit: usize,
    param_count: usize,
) -> Result<(SignedDelta, Vec<f32>), WireError> {
    let wire: OutboxWire = decode(bytes, limit)?;
    if !wire.residual.is_empty() && wire.residual.len() != param_count * 4 {
        return Err(WireError::Malformed(format!(
            "residual holds {} bytes, expected 0 or {}",
            wire.residual.len(),
            param_count * 4
        )));
    }
    Ok((delta_from_wire(wire.delta)?, le_bytes_to_f32s(wire.residual)))
}

/// A request of the state sync protocol.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRequest {
    /// Which state do you serve? Answered with a [`SyncResponse::Offer`].
    Offer,
    /// Chunk `index` of the state whose root is `root`.
    Chunk { root: [u8; 32], index: u32 },
    /// A node that installed a state and observes until round `from` tells a
    /// peer when to expect its deltas ([`SYNCING`]: not before it says again).
    /// Answered with [`SyncResponse::Noted`].
    Joining { from: u64 },
}

/// `SyncRequest::Joining { from: SYNCING }`: the sender is fetching state and
/// will say later from which round it contributes.
pub const SYNCING: u64 = u64::MAX;

/// The largest encoded [`SyncRequest`].
pub const MAX_SYNC_REQUEST_BYTES: usize = 64;

/// An answer of the state sync protocol.
#[derive(Clone, Debug, PartialEq)]
pub enum SyncResponse {
    Offer(StateOffer),
    Chunk(Vec<u8>),
    /// Not serving (still gathering, or that root is no longer held).
    Unavailable,
    /// A [`SyncRequest::Joining`] was taken note of.
    Noted,
}

#[derive(Serialize, Deserialize)]
struct StateManifestWire<'a> {
    round: u64,
    lineage: [u8; 32],
    total_len: u64,
    /// Concatenated 32-byte chunk hashes.
    #[serde(borrow, with = "serde_bytes")]
    chunk_hashes: &'a [u8],
}

#[derive(Serialize, Deserialize)]
enum SyncResponseWire<'a> {
    Offer {
        #[serde(borrow)]
        manifest: StateManifestWire<'a>,
        expected_from: u64,
        #[serde(borrow)]
        deltas: Vec<SignedDeltaWire<'a>>,
        expected: Vec<PublicKey>,
    },
    Chunk(#[serde(borrow, with = "serde_bytes")] &'a [u8]),
    Unavailable,
    Noted,
}

/// Encodes a sync request.
pub fn encode_sync_request(request: &SyncRequest) -> Vec<u8> {
    encode(request)
}

/// Decodes a sync request.
pub fn decode_sync_request(bytes: &[u8]) -> Result<SyncRequest, WireError> {
    decode(bytes, MAX_SYNC_REQUEST_BYTES)
}

/// Encodes a sync response; an offer carries at most [`MAX_SYNC_DELTAS`]
/// deltas and [`MAX_SYNC_EXPECTED`] expected keys.
pub fn encode_sync_response(response: &SyncResponse) -> Vec<u8> {
    match response {
        SyncResponse::Offer(offer) => {
            let hashes: Vec<u8> = offer.manifest.chunk_hashes.iter().flatten().copied().collect();
            encode(&SyncResponseWire::Offer {
                manifest: StateManifestWire {
                    round: offer.manifest.round,
                    lineage: offer.manifest.lineage,
                    total_len: offer.manifest.total_len,
                    chunk_hashes: &hashes,
                },
                expected_from: offer.expected_from,
                deltas: offer
                    .deltas
                    .iter()
                    .take(MAX_SYNC_DELTAS)
                    .map(|d| SignedDeltaWire {
                        header: d.header.clone(),
                        payload: &d.payload,
                        signature: &d.signature,
                    })
                    .collect(),
                expected: offer.expected.iter().take(MAX_SYNC_EXPECTED).copied().collect(),
            })
        }
        SyncResponse::Chunk(bytes) => encode(&SyncResponseWire::Chunk(bytes)),
        SyncResponse::Unavailable => encode(&SyncResponseWire::Unavailable),
        SyncResponse::Noted => encode(&SyncResponseWire::Noted),
    }
}

/// Decodes a sync response of at most `limit` bytes. Deltas of an offer still
/// need [`SignedDelta::validate`]; its manifest needs [`StateManifest::check`].
pub fn decode_sync_response(bytes: &[u8], limit: usize) -> Result<SyncResponse, WireError> {
    Ok(match decode(bytes, limit)? {
        SyncResponseWire::Offer { manifest, expected_from, deltas, expected } => {
            if manifest.chunk_hashes.len() % 32 != 0 || manifest.chunk_hashes.len() / 32 > MAX_CHUNKS {
                return Err(WireError::Malformed(format!(
                    "manifest carries {} bytes of chunk hashes, not a multiple of 32 up to {MAX_CHUNKS} of them",
                    manifest.chunk_hashes.len()
                )));
            }
            if deltas.len() > MAX_SYNC_DELTAS {
                return Err(WireError::Malformed(format!(
                    "offer carries {} deltas, over {MAX_SYNC_DELTAS}",
                    deltas.len()
                )));
            }
            if expected.len() > MAX_SYNC_EXPECTED {
                return Err(WireError::Malformed(format!(
                    "offer lists {} expected keys, over {MAX_SYNC_EXPECTED}",
                    expected.len()
                )));
            }
            let chunk_hashes =
                manifest.chunk_hashes.chunks_exact(32).map(|c| c.try_into().expect("32 bytes")).collect();
            let mut decoded = Vec::with_capacity(deltas.len());
            for d in deltas {
                decoded.push(delta_from_wire(d)?);
            }
            SyncResponse::Offer(StateOffer {
                manifest: StateManifest {
                    round: manifest.round,
                    lineage: manifest.lineage,
                    total_len: manifest.total_len,
                    chunk_hashes,
                },
                expected_from,
                deltas: decoded,
                expected,
            })
        }
        SyncResponseWire::Chunk(bytes) => SyncResponse::Chunk(bytes.to_vec()),
        SyncResponseWire::Unavailable => SyncResponse::Unavailable,
        SyncResponseWire::Noted => SyncResponse::Noted,
    })
}

// The types' own encodings: their methods that read and write bytes live
// here, beside the formats, so that no type's module depends on this one.

impl SignedDelta {
    /// Decodes and fully validates bytes received from the network.
    pub fn from_untrusted(bytes: &[u8], rules: &DeltaRules) -> Result<Self, Refusal> {
        let limit = rules.codec.max_payload_len(rules.params) + 1024;
        let delta = decode_delta(bytes, limit).map_err(|e| Refusal::Malformed(e.to_string()))?;
        delta.validate(rules)?;
        Ok(delta)
    }

    /// Encoded for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_delta(self)
    }
}

impl EquivocationProof {
    /// Encoded for the wire and the ban record.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_proof(self)
    }

    /// Decodes untrusted bytes (at most [`MAX_PROOF_BYTES`]) and verifies the
    /// proof for `run`; returns it with the guilty key.
    pub fn from_untrusted(bytes: &[u8], run: RunId) -> Result<(Self, PublicKey), ProofError> {
        let proof = decode_proof(bytes, MAX_PROOF_BYTES).map_err(|e| ProofError::Malformed(e.to_string()))?;
        let key = proof.verify(run)?;
        Ok((proof, key))
    }
}

impl LeaveNotice {
    /// Decodes untrusted bytes (at most [`MAX_LEAVE_BYTES`]) and verifies them for `run_id`.
    pub fn from_untrusted(bytes: &[u8], run_id: RunId) -> Result<Self, LeaveRefusal> {
        let notice =
            decode_leave(bytes, MAX_LEAVE_BYTES).map_err(|e| LeaveRefusal::Malformed(e.to_string()))?;
        notice.verify(run_id)?;
        Ok(notice)
    }

    /// Encoded for the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        encode_leave(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sync_reply_round_trips() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        let delta =
            SignedDelta::sign(&key, crate::RunId([0; 32]), 2, [0; 32], 9, crate::Codec::Dense, vec![0; 8]);
        let reply = SyncReply {
            state: ModelState {
                round: 2,
                lineage: [3; 32],
                params: vec![1.0, 2.0],
                momentum: vec![0.0, 0.0],
            },
            expected_from: 2,
            deltas: vec![delta],
        };
        let bytes = encode_sync_reply(&reply);
        assert_eq!(decode_sync_reply(&bytes, 1 << 20, 2).unwrap(), reply);
        assert!(decode_sync_reply(&bytes, 1 << 20, 3).is_err());
    }

    #[test]
    fn sync_requests_and_responses_round_trip() {
        for request in [
            SyncRequest::Offer,
            SyncRequest::Chunk { root: [7; 32], index: 4095 },
            SyncRequest::Joining { from: u64::MAX },
        ] {
            let bytes = encode_sync_request(&request);
            assert!(bytes.len() <= MAX_SYNC_REQUEST_BYTES);
            assert_eq!(decode_sync_request(&bytes).unwrap(), request);
        }
        let state = ModelState { round: 3, lineage: [1; 32], params: vec![1.0, 2.0], momentum: vec![0.0; 2] };
        let snapshot = crate::chunks::StateSnapshot::of(&state, &crate::state_file::Layout::flat(2));
        let offer = SyncResponse::Offer(StateOffer {
            manifest: snapshot.manifest.clone(),
            expected_from: 5,
            deltas: vec![],
            expected: vec![crate::test_keys::pk(2), crate::test_keys::pk(3)],
        });
        for response in
            [offer, SyncResponse::Chunk(vec![1, 2, 3]), SyncResponse::Unavailable, SyncResponse::Noted]
        {
            let bytes = encode_sync_response(&response);
            assert_eq!(decode_sync_response(&bytes, 1 << 20).unwrap(), response);
        }
    }

    #[test]
    fn a_delta_signed_into_its_encoding_is_the_delta_signed_then_encoded() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
        for (codec, payload) in [
            (crate::Codec::Dense, crate::Codec::Dense.encode(&[1.5, -0.0, 3.25, f32::MIN_POSITIVE])),
            (crate::Codec::Dense, Vec::new()),
            (crate::Codec::Int8, vec![7; 300]),
        ] {
            let signed = SignedDelta::sign(&key, RunId([4; 32]), 9, [5; 32], 64, codec, payload.clone());
            let (want, want_bytes) = encode_delta_shared(signed);
            let (got, bytes) =
                sign_delta_encoded(None, &key, RunId([4; 32]), 9, [5; 32], 64, codec, payload.len(), |out| {
                    out.extend_from_slice(&payload)
                });
            assert_eq!(bytes, want_bytes, "{codec}");
            assert!(got == want, "{codec}");
            let pool = BufferPool::new();
            let (pooled, pooled_bytes) = sign_delta_encoded(
                Some(&pool),
                &key,
                RunId([4; 32]),
                9,
                [5; 32],
                64,
                codec,
                payload.len(),
                |out| out.extend_from_slice(&payload),
            );
            assert_eq!(pooled_bytes, want_bytes, "{codec} into a pooled buffer");
            assert!(pooled == want, "{codec}");
            assert_eq!(decode_delta(&bytes, 1 << 20).unwrap().payload, payload);
        }
    }

    #[test]
    fn a_signed_delta_is_encoded_into_one_buffer_sized_up_front() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
        // The largest header: every integer at its longest varint, the longest codec name.
        let codec = crate::Codec::Sparse { k: 1 << 20, chunk: 1 << 20, bits: 4 };
        for len in [0, 1, 4096] {
            let delta = SignedDelta::sign(
                &key,
                crate::RunId([9; 32]),
                u64::MAX,
                [8; 32],
                u64::MAX,
                codec,
                vec![5; len],
            );
            let bytes = encode_delta(&delta);
            assert!(bytes.len() <= len + DELTA_FRAMING_BYTES, "{} bytes of framing", bytes.len() - len);
            assert_eq!(bytes.capacity(), len + DELTA_FRAMING_BYTES, "the buffer grew");
            assert_eq!(decode_delta(&bytes, usize::MAX).unwrap(), delta);
            let (shared, shared_bytes) = encode_delta_shared(delta.clone());
            assert_eq!((&shared, &shared_bytes[..]), (&delta, &bytes[..]));
            assert_eq!(shared.payload.as_ptr_range().end, shared_bytes[bytes.len() - 65..].as_ptr());
            let residual = vec![0.5f32; 3];
            let outbox = encode_outbox(&delta, &residual);
            assert_eq!(decode_outbox(&outbox, usize::MAX, 3).unwrap(), (delta, residual));
        }
    }

    #[test]
    fn refuses_input_over_the_callers_limit() {
        let bytes = encode(&vec![1u8; 100]);
        assert!(matches!(decode::<Vec<u8>>(&bytes, 10), Err(WireError::TooLarge { .. })));
    }

    #[test]
    fn refuses_trailing_bytes() {
        let mut bytes = encode(&7u32);
        bytes.push(0);
        assert_eq!(decode::<u32>(&bytes, 100), Err(WireError::TrailingBytes(1)));
    }

    #[test]
    fn a_huge_length_prefix_is_an_error_not_an_allocation() {
        // Varint prefix claiming u64::MAX elements.
        let bytes = [0xFFu8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode::<&serde_bytes::Bytes>(&bytes, 100).is_err());
    }
}
