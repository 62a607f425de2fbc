//! Private swarms: the pre-shared key of a libp2p private network (`pnet`).
//!
//! The key file is kubo's `swarm.key` format (`/key/swarm/psk/1.0.0/`,
//! `/base16/`, 64 hex digits), so keys made by `ipfs-swarm-key-gen` work too.
//! Every TCP connection of a node with a key is encrypted with it before noise
//! runs: a peer without the same key cannot even complete a handshake. A spec
//! records the key's fingerprint (never the key), so a node refuses to run a
//! private spec without its key or with another one. QUIC has no pnet, so a
//! node with a key neither listens on nor dials QUIC addresses.

use std::path::{Path, PathBuf};

use libp2p::{multiaddr::Protocol, pnet::PreSharedKey, Multiaddr};
use rand::Rng;
use starling_protocol::RunSpec;

/// The file name of a swarm key in a datadir (and next to a spec `spec new --private` writes).
pub const SWARM_KEY_FILE: &str = "swarm.key";

/// Why a swarm key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SwarmKeyError {
    #[error("cannot read the swarm key {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the swarm key {path} is not a swarm.key file ({reason}); expect three lines: /key/swarm/psk/1.0.0/, /base16/ and 64 hex digits")]
    Parse { path: PathBuf, reason: String },
    #[error("cannot write the swarm key {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} already exists; pass it with --swarm-key to use that key, or remove it to make a new one"
    )]
    Exists { path: PathBuf },
    #[error("run {run} is private (its spec names swarm key {expected}) and this node has no swarm key: pass the run's key with --swarm-key FILE or copy it to <datadir>/swarm.key")]
    Missing { run: String, expected: String },
    #[error("run {run} needs swarm key {expected} but this node's swarm key is {found}: pass the run's key with --swarm-key FILE or replace <datadir>/swarm.key")]
    Wrong { run: String, expected: String, found: String },
}

/// Reads a kubo-format swarm key file.
pub fn read_key(path: &Path) -> Result<PreSharedKey, SwarmKeyError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| SwarmKeyError::Read { path: path.to_path_buf(), source })?;
    // Keys written on Windows end their lines with \r\n; libp2p's parser splits on \n only.
    let text = text.replace('\r', "");
    text.parse().map_err(|e: libp2p::pnet::KeyParseError| SwarmKeyError::Parse {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// A new random swarm key.
pub fn generate_key() -> PreSharedKey {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    PreSharedKey::new(bytes)
}

/// Writes `key` to a new file at `path` (owner-readable only on Unix); never overwrites.
pub fn write_key(path: &Path, key: PreSharedKey) -> Result<(), SwarmKeyError> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(|source| match source.kind() {
        std::io::ErrorKind::AlreadyExists => SwarmKeyError::Exists { path: path.to_path_buf() },
        _ => SwarmKeyError::Write { path: path.to_path_buf(), source },
    })?;
    file.write_all(format!("{}\n", key.to_key_file()).as_bytes())
        .map_err(|source| SwarmKeyError::Write { path: path.to_path_buf(), source })
}

/// The fingerprint of a key as the spec records it (32 hex digits).
pub fn fingerprint(key: &PreSharedKey) -> String {
    key.fingerprint().to_string()
}

/// Checks that `key` is the one `spec` asks for. A spec that names no key runs
/// with or without one (a key alone makes a private network, as in kubo).
pub fn check_key(spec: &RunSpec, key: Option<&PreSharedKey>) -> Result<(), SwarmKeyError> {
    let Some(expected) = &spec.swarm_key_fingerprint else { return Ok(()) };
    let run = spec.run_id().short();
    match key {
        None => Err(SwarmKeyError::Missing { run, expected: expected.clone() }),
        Some(key) if !fingerprint(key).eq_ignore_ascii_case(expected) => {
            Err(SwarmKeyError::Wrong { run, expected: expected.clone(), found: fingerprint(key) })
        }
        Some(_) => Ok(()),
    }
}

/// Whether `address` goes over QUIC (which pnet cannot protect).
pub fn is_quic(address: &Multiaddr) -> bool {
    address.iter().any(|p| matches!(p, Protocol::Quic | Protocol::QuicV1))
}

/// `addresses` without the QUIC ones, and the QUIC ones that were dropped.
pub fn without_quic(addresses: Vec<Multiaddr>) -> (Vec<Multiaddr>, Vec<Multiaddr>) {
    addresses.into_iter().partition(|a| !is_quic(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_through_kubos_file_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(SWARM_KEY_FILE);
        let key = generate_key();
        write_key(&path, key).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[..2], ["/key/swarm/psk/1.0.0/", "/base16/"]);
        assert_eq!(lines[2].len(), 64);
        assert_eq!(fingerprint(&read_key(&path).unwrap()), fingerprint(&key));
        assert!(matches!(write_key(&path, key), Err(SwarmKeyError::Exists { .. })));
        // A kubo key written on Windows.
        std::fs::write(&path, text.replace('\n', "\r\n")).unwrap();
        assert_eq!(fingerprint(&read_key(&path).unwrap()), fingerprint(&key));
        std::fs::write(&path, "/key/swarm/psk/1.0.0/\n/base16/\nnothex\n").unwrap();
        let err = read_key(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("64 hex"), "{err}");
    }

    #[test]
    fn a_private_spec_needs_its_own_key() {
        let (key, other) = (generate_key(), generate_key());
        let mut spec = RunSpec::builtin();
        check_key(&spec, None).unwrap();
        check_key(&spec, Some(&key)).unwrap();
        spec.swarm_key_fingerprint = Some(fingerprint(&key));
        check_key(&spec, Some(&key)).unwrap();
        let missing = check_key(&spec, None).unwrap_err().to_string();
        assert!(missing.contains("--swarm-key") && missing.contains("swarm.key"), "{missing}");
        let wrong = check_key(&spec, Some(&other)).unwrap_err().to_string();
        assert!(wrong.contains(&fingerprint(&other)) && wrong.contains("--swarm-key"), "{wrong}");
    }

    #[test]
    fn quic_addresses_are_told_apart() {
        let tcp: Multiaddr = "/ip4/1.2.3.4/tcp/9000".parse().unwrap();
        let quic: Multiaddr = "/ip4/1.2.3.4/udp/9000/quic-v1".parse().unwrap();
        let (kept, dropped) = without_quic(vec![tcp.clone(), quic.clone()]);
        assert_eq!((kept, dropped), (vec![tcp], vec![quic]));
    }
}
