//! Golden test vectors for Starling's consensus encodings.
//!
//! Every value here is something nodes must compute bit for bit alike to train
//! together: run ids (the BLAKE3 hash of a spec's bincode encoding), delta
//! header digests (what ed25519 signs), the wire bytes of a signed delta and
//! its id, the lineage hash chain, and the state hashes a syncing node checks.
//! They all go through serde, bincode 2 (see `starling_protocol::wire`) and a
//! few `Display` impls (codec, aggregation rule and key names are serialized
//! as strings), so a dependency bump or an innocent-looking refactor could
//! change them silently and split the network between old and new builds.
//!
//! Each test rebuilds one value from fixed inputs (fixed seeds for the keys;
//! ed25519 signatures are deterministic) and compares it with the hex recorded
//! here or under `tests/golden/`. A failure means the encoding changed. If that
//! is deliberate, bump the domain string or version of what changed and update
//! the vector; never update a vector alone.

use ed25519_dalek::SigningKey;
use starling_protocol::{
    state_file::{self, Layout},
    AggregationRule, Codec, DeltaRules, ModelState, PublicKey, RunId, RunSpec, SignedDelta, StateSnapshot,
};

const CHANGED: &str = "this consensus value changed: nodes built before and after this change would \
                       not agree; if the change is deliberate, bump the domain/version and update the vector";

/// Lowercase hex of `bytes`.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Asserts that `got` is the recorded vector `want` (lowercase hex).
fn check(what: &str, got: &[u8], want: &str) {
    assert_eq!(hex(got), want, "{what}: {CHANGED}");
}

/// A spec with two allowed keys from fixed seeds, in that order (the order is
/// part of the run id).
fn private_spec() -> RunSpec {
    let keys = [7u8, 8].map(|seed| PublicKey::of(&SigningKey::from_bytes(&[seed; 32])).to_string());
    RunSpec { allowed_keys: Some(keys.to_vec()), ..RunSpec::builtin() }
}

/// The signer of the golden delta.
fn signer() -> SigningKey {
    SigningKey::from_bytes(&[1u8; 32])
}

/// The initial parameters of the golden state, also the dense delta's values.
const PARAMS: [f32; 4] = [0.5, -1.0, 2.0, 0.25];

/// A signed dense delta over 4 parameters for round 0 of a fixed run id,
/// trained from the genesis state.
fn delta() -> SignedDelta {
    let base = ModelState::initial(PARAMS.to_vec()).lineage;
    SignedDelta::sign(&signer(), RunId([0x5a; 32]), 0, base, 100, Codec::Dense, Codec::Dense.encode(&PARAMS))
}

/// The genesis state after recording the merge of [`delta`] in round 0
/// (`record_merge` moves only the round and lineage; the parameters stay
/// [`PARAMS`] and the momentum zero).
fn merged_state() -> ModelState {
    let mut state = ModelState::initial(PARAMS.to_vec());
    state.record_merge(0, &[delta()]);
    state
}

/// The wire bytes of [`delta`], recorded in `tests/golden/`.
/// `#` starts a comment; whitespace is ignored.
fn golden_delta_hex() -> String {
    include_str!("golden/delta_dense4.hex")
        .lines()
        .flat_map(|line| line.split('#').next().unwrap_or("").split_whitespace())
        .collect()
}

#[test]
fn builtin_run_id() {
    check(
        "run id of RunSpec::builtin()",
        &RunSpec::builtin().run_id().0,
        "03ba00aa5b6829f42e526a6a39b537e5b42a60ea160fda58bfee1aeb42eebd74",
    );
}

#[test]
fn private_run_id() {
    check(
        "run id of the builtin spec with two allowed keys",
        &private_spec().run_id().0,
        "ab85480add2e2a87efbb4a190583b253085d033219c0bd5422634fd60a51b811",
    );
}

#[test]
fn topk_trimmed_mean_run_id() {
    // Pins the `Display` of a top-k codec and of a parameterized aggregation
    // rule, both serialized as strings into the spec hashed for the run id.
    let spec = RunSpec {
        aggregation: AggregationRule::TrimmedMean { trim: 0.2 },
        ..RunSpec::builtin_with_codec(Codec::TopK { ppm: 10_000, int8: true })
    };
    check(
        "run id of the builtin spec with topk:0.01+int8 and trimmed-mean:0.2",
        &spec.run_id().0,
        "0269eedaa332bb8c6df468b5ad0a12d80988beb5c1d4989232e47955aa72b764",
    );
}

#[test]
fn genesis_lineage() {
    check(
        "lineage of ModelState::initial",
        &ModelState::initial(PARAMS.to_vec()).lineage,
        "1cbe1cc741ce421fc50cffb539d9bd0a101b2d22b2ed42d6eae97fa6eff4da46",
    );
}

#[test]
fn delta_header_digest() {
    check(
        "header digest of the dense delta",
        &starling_protocol::delta::header_digest(&delta().header),
        "52575079c9a08b8faf8ad29130723853d3a62e8c5653d46499058a77ee58915e",
    );
}

#[test]
fn delta_wire_bytes() {
    assert_eq!(hex(&delta().to_bytes()), golden_delta_hex(), "wire bytes of the dense delta: {CHANGED}");
}

#[test]
fn recorded_delta_bytes_still_decode_and_verify() {
    let text = golden_delta_hex();
    let bytes: Vec<u8> =
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex")).collect();
    let decoded =
        SignedDelta::from_untrusted(&bytes, &DeltaRules::new(RunId([0x5a; 32]), Codec::Dense, PARAMS.len()))
            .unwrap_or_else(|e| panic!("recorded delta bytes are refused ({e}): {CHANGED}"));
    assert_eq!(decoded, delta(), "recorded delta bytes decode to another delta: {CHANGED}");
}

#[test]
fn delta_id() {
    check(
        "id of the dense delta",
        &delta().id().0,
        "cf4be20193ac59fe4c5a30dbda6ac67027a4a35bb5a35014ea6042239cd9c462",
    );
}

#[test]
fn lineage_after_one_merge() {
    check(
        "lineage after record_merge of the dense delta",
        &merged_state().lineage,
        "23e8ec9b38e54c2e61c280d1466bd4f00b988dc77ef8f939abb28c5e04186f26",
    );
}

#[test]
fn state_root() {
    check(
        "StateSnapshot::of_flat(state).root",
        &StateSnapshot::of_flat(&merged_state()).root,
        "bb87cd37fa2be813da57459119d05822339e1d5797ec5c83762b34e94cab9d3f",
    );
}

#[test]
fn state_file_encoding() {
    // The state file a checkpoint holds and state sync serves: the header's
    // length, a JSON header (metadata, then each tensor's place), then the
    // params and the momentum as little-endian f32s.
    let bytes = state_file::encode_state(&Layout::flat(4), &merged_state());
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    let want = concat!(
        r#"{"__metadata__":{"starling.format":"state/1","#,
        r#""starling.lineage":"23e8ec9b38e54c2e61c280d1466bd4f00b988dc77ef8f939abb28c5e04186f26","#,
        r#""starling.order":"[\"params\"]","starling.round":"1"},"#,
        r#""outer_momentum.params":{"data_offsets":[0,16],"dtype":"F32","shape":[4]},"#,
        r#""params":{"data_offsets":[16,32],"dtype":"F32","shape":[4]}}"#,
    );
    assert_eq!(header.trim_end(), want, "state file header: {CHANGED}");
    check(
        "state file tensors",
        &bytes[8 + header_len..],
        // Tensors in name order: the momentum, then the params.
        concat!("00000000000000000000000000000000", "0000003f000080bf000000400000803e"),
    );
}

#[test]
fn state_hash() {
    check(
        "ModelState::hash",
        &merged_state().hash(),
        "efeb8fb8e5baa16c01b273c6f4f3bb72609b849a977c4d8d94ba4c674c2eb20e",
    );
}

#[test]
fn params_hash() {
    check(
        "ModelState::params_hash",
        &merged_state().params_hash(),
        "6b1cb2edac90dcbd19a6a6b5e2d46eb00b1406e1f5b941efb0f172803c052edf",
    );
}
