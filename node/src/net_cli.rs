//! Command-line flags for private swarms and reachability (`starling run
//! --swarm-key/--relay/--relay-server/--external-addr`, `starling spec new
//! --private/--swarm-key`), resolved into [`NetOptions`] and the spec.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use libp2p::Multiaddr;
use starling_protocol::RunSpec;
use tracing::{info, warn};

use crate::net::{
    pnet::{self, SWARM_KEY_FILE},
    reach::{relay_peer, ReachOptions},
    NetOptions,
};

/// Private swarms and reachability of `starling run`.
#[derive(Debug, Args)]
pub struct ReachArgs {
    /// The private network's pre-shared key (kubo's swarm.key format). Defaults
    /// to <datadir>/swarm.key when that file exists. With a key, the node speaks
    /// TCP only (pnet cannot protect QUIC) and connects only to peers with the same key.
    #[arg(long, value_name = "FILE", env = "STARLING_SWARM_KEY")]
    pub swarm_key: Option<PathBuf>,
    /// Reserve a slot on this relay and be reachable through it
    /// (RELAY_ADDR/p2p-circuit); e.g. /ip4/1.2.3.4/tcp/9000/p2p/12D3Koo... (repeatable).
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub relay: Vec<Multiaddr>,
    /// Serve as a relay for nodes behind NAT (circuit relay v2, bounded: 128
    /// reservations, 64 circuits of at most 1 GiB and 1 hour each).
    #[arg(long)]
    pub relay_server: bool,
    /// An address this node is reachable at that it cannot see itself (a port
    /// forward, a public IP in front of it), announced to peers and relays (repeatable).
    #[arg(long, value_name = "ADDR", value_delimiter = ',')]
    pub external_addr: Vec<Multiaddr>,
}

impl ReachArgs {
    /// Loads the swarm key and checks it against `spec`, then fills `net`; QUIC
    /// addresses are dropped from `listen` and `bootnodes` (with a warning) for a private network.
    pub fn apply(
        &self,
        datadir: &Path,
        spec: &RunSpec,
        net: &mut NetOptions,
        listen: &mut Vec<Multiaddr>,
        bootnodes: &mut Vec<Multiaddr>,
    ) -> Result<()> {
        let default_key = datadir.join(SWARM_KEY_FILE);
        let key_path = self.swarm_key.clone().or_else(|| default_key.exists().then_some(default_key));
        let swarm_key = key_path.as_deref().map(pnet::read_key).transpose()?;
        pnet::check_key(spec, swarm_key.as_ref()).with_context(|| match &key_path {
            Some(path) => format!("swarm key file {}", path.display()),
            None => format!("no --swarm-key given and no {}", datadir.join(SWARM_KEY_FILE).display()),
        })?;
        for relay in &self.relay {
            if relay_peer(relay).is_none() {
                bail!("--relay {relay} does not end in /p2p/PEER_ID: give the relay's full address as it logs it");
            }
        }
        if let (Some(key), Some(path)) = (&swarm_key, &key_path) {
            info!(file = %path.display(), fingerprint = %pnet::fingerprint(key), "private network: only peers with this swarm key can connect (TCP only)");
            for (what, list) in [("--listen", &mut *listen), ("--bootnodes", &mut *bootnodes)] {
                let (kept, dropped) = pnet::without_quic(std::mem::take(list));
                for address in dropped {
                    warn!(%address, "a private network has no QUIC (pnet only protects TCP): ignoring this {what} address");
                }
                *list = kept;
            }
            if listen.is_empty() {
                bail!("a private network listens on TCP only, and --listen names no TCP address: add one, e.g. --listen /ip4/0.0.0.0/tcp/0");
            }
        }
        net.swarm_key = swarm_key;
        let (relays, dropped) = match swarm_key {
            Some(_) => pnet::without_quic(self.relay.clone()),
            None => (self.relay.clone(), vec![]),
        };
        for address in dropped {
            warn!(%address, "a private network has no QUIC: ignoring this --relay address");
        }
        net.reach = ReachOptions {
            relay_server: self.relay_server,
            relays,
            external_addrs: self.external_addr.clone(),
        };
        Ok(())
    }
}

/// `spec new --private/--swarm-key`: the fingerprint to record in the spec.
/// `--swarm-key FILE` uses that key; `--private` alone writes a new key to
/// `swarm.key` beside `out` (or in the current directory), never over an existing file.
pub fn spec_swarm_key(private: bool, swarm_key: Option<&Path>, out: Option<&Path>) -> Result<Option<String>> {
    let key = match (private, swarm_key) {
        (_, Some(path)) => pnet::read_key(path)?,
        (true, None) => {
            let dir =
                out.and_then(Path::parent).filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
            let path = dir.join(SWARM_KEY_FILE);
            let key = pnet::generate_key();
            pnet::write_key(&path, key)?;
            eprintln!(
                "wrote a new swarm key to {} (fingerprint {}): give it to every member, e.g. as <datadir>/swarm.key",
                path.display(),
                pnet::fingerprint(&key)
            );
            key
        }
        (false, None) => return Ok(None),
    };
    Ok(Some(pnet::fingerprint(&key)))
}
