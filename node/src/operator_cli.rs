//! The operator's commands that set up and read a datadir: `init`, `key`,
//! `export`, `spec show`/`spec hash` and `config dump`. While a node runs on
//! the datadir (and holds its lock), `key show` and `export` ask that node
//! through its HTTP API instead.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use ed25519_dalek::SigningKey;
use rand::Rng;
use starling_protocol::RunSpec;
use starling_storage::Store;

use crate::{config::Provenance, dirs::Datadir};

/// `--datadir`, where a command takes one.
#[derive(Debug, Args)]
pub struct DatadirArg {
    /// The node's datadir (default: $XDG_DATA_HOME/starling, or ~/.local/share/starling).
    #[arg(long, env = "STARLING_DATADIR")]
    pub datadir: Option<PathBuf>,
}

impl DatadirArg {
    pub fn resolve(&self) -> Datadir {
        Datadir::resolve(self.datadir.as_deref())
    }
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create the node's identity key; refuses to replace an existing one without --force.
    Generate {
        #[command(flatten)]
        datadir: DatadirArg,
        /// Replace an existing key: the node gets a new peer id, and a private
        /// run that lists the old key will refuse it.
        #[arg(long)]
        force: bool,
    },
    /// Print the node's peer id (what `--bootnodes` addresses and `spec new --allow` take).
    Show {
        #[command(flatten)]
        datadir: DatadirArg,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    /// One tensor per model variable, named and shaped as the model's, f32.
    Safetensors,
}

/// `starling export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    #[arg(long, value_enum, default_value_t = ExportFormat::Safetensors)]
    pub format: ExportFormat,
    /// The file to write.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub datadir: DatadirArg,
}

/// A spec given as a file, or the one stored in a datadir.
#[derive(Debug, Args)]
pub struct SpecSource {
    /// The spec file (TOML); the spec stored in --datadir when absent.
    #[arg(long, env = "STARLING_SPEC")]
    pub spec: Option<PathBuf>,
    #[command(flatten)]
    pub datadir: DatadirArg,
}

impl SpecSource {
    pub fn load(&self) -> Result<RunSpec> {
        if let Some(path) = &self.spec {
            return crate::spec_file::load_spec(path);
        }
        let datadir = self.datadir.resolve();
        if !datadir.exists() {
            bail!("pass --spec FILE (no datadir at {} to read a stored spec from)", datadir.root().display());
        }
        let (_lock, store) = open_store(&datadir)?;
        store.spec()?.with_context(|| {
            format!("the datadir {} holds no run spec yet; pass --spec FILE", datadir.root().display())
        })
    }
}

/// A datadir's store, or the running node that holds it.
enum Access {
    Store(crate::dirs::DatadirLock, Box<Store>),
    Running,
}

/// Locks the datadir and opens its store, unless a node runs on it.
fn open_or_running(datadir: &Datadir) -> Result<Access> {
    datadir.require()?;
    match datadir.lock() {
        Ok(lock) => Ok(Access::Store(lock, Box::new(Store::open(datadir.root())?))),
        Err(crate::dirs::DatadirError::Locked { .. }) => Ok(Access::Running),
        Err(e) => Err(e.into()),
    }
}

/// `GET path` of the node running on `datadir`.
async fn ask_running(datadir: &Datadir, path: &str) -> Result<hyper::body::Bytes> {
    let args = crate::http::client::NodeApiArgs { datadir: Some(datadir.root().to_path_buf()), http: None };
    let (_, body) = crate::http::client::call(&args, hyper::Method::GET, path).await.with_context(|| {
        format!(
            "the datadir {} is in use by a running node, and asking that node over its HTTP API (it must run without --no-http) failed",
            datadir.root().display()
        )
    })?;
    Ok(body)
}

/// Locks the datadir, then opens its store.
fn open_store(datadir: &Datadir) -> Result<(crate::dirs::DatadirLock, Store)> {
    datadir.require()?;
    let lock = datadir.lock()?;
    let store = Store::open(datadir.root())?;
    Ok((lock, store))
}

/// The libp2p peer id of a node key.
pub fn peer_id(key: &SigningKey) -> String {
    crate::net::keypair(key).public().to_peer_id().to_string()
}

/// `starling init`: creates the datadir, its key and a commented config.toml;
/// keeps what is already there, and says which.
/// `config_template` is the commented config.toml to write ([`crate::config::commented_defaults`]).
pub fn init(datadir: &DatadirArg, config_template: &str) -> Result<()> {
    let datadir = datadir.resolve();
    let root = datadir.root().display();
    match datadir.create()? {
        true => println!("created the datadir {root}"),
        false => println!("the datadir {root} exists"),
    }
    let (_lock, store) = open_store(&datadir)?;
    match store.existing_identity()? {
        Some(key) => println!("kept the existing node key: peer id {}", peer_id(&key)),
        None => println!("generated a node key: peer id {}", peer_id(&store.identity()?)),
    }
    let config = datadir.config_file();
    if config.exists() {
        println!("kept {}", config.display());
    } else {
        std::fs::write(&config, config_template)
            .with_context(|| format!("cannot write {}", config.display()))?;
        println!(
            "wrote {} (the options of `starling run`, commented out at their defaults)",
            config.display()
        );
    }
    store.flush()?;
    println!("next: starling run --datadir {root} --spec SPEC.toml --bootnodes /ip4/.../tcp/.../p2p/...");
    Ok(())
}

/// `starling key generate|show`.
pub async fn key(command: &KeyCommand) -> Result<()> {
    match command {
        KeyCommand::Show { datadir } => {
            let datadir = datadir.resolve();
            let (_lock, store) = match open_or_running(&datadir)? {
                Access::Store(lock, store) => (lock, store),
                Access::Running => {
                    let body = ask_running(&datadir, "/status").await?;
                    let status: crate::status::NodeStatus = serde_json::from_slice(&body)
                        .context("the running node sent a status this starling cannot read")?;
                    println!("{}", status.peer_id);
                    return Ok(());
                }
            };
            match store.existing_identity()? {
                Some(key) => println!("{}", peer_id(&key)),
                None => bail!(
                    "the datadir {} has no node key yet; create one with `starling init --datadir {0}`",
                    datadir.root().display()
                ),
            }
        }
        KeyCommand::Generate { datadir, force } => {
            let datadir = datadir.resolve();
            datadir.create()?;
            let (_lock, store) = open_store(&datadir)?;
            if let Some(key) = store.existing_identity()? {
                if !force {
                    bail!(
                        "the datadir {} already has a node key (peer id {}); pass --force to replace it",
                        datadir.root().display(),
                        peer_id(&key)
                    );
                }
            }
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            let key = SigningKey::from_bytes(&secret);
            store.set_identity(&key)?;
            println!("{}", peer_id(&key));
        }
    }
    Ok(())
}

/// `starling export`: the model of the datadir's newest checkpoint.
pub async fn export(args: &ExportArgs) -> Result<()> {
    let datadir = args.datadir.resolve();
    let (_lock, store) = match open_or_running(&datadir)? {
        Access::Store(lock, store) => (lock, store),
        Access::Running => return export_from_running(args, &datadir).await,
    };
    let root = datadir.root().display();
    let spec = store.spec()?.with_context(|| {
        format!("the datadir {root} holds no run spec: run a node on it first (`starling run --spec FILE`)")
    })?;
    let scan = store.latest_checkpoint(spec.param_count())?;
    let checkpoint = scan.checkpoint.with_context(|| {
        format!("the datadir {root} holds no readable checkpoint yet: let the node merge a round first")
    })?;
    match args.format {
        ExportFormat::Safetensors => {
            let bytes = starling_training::init::encode(
                &spec,
                &checkpoint.state.params,
                Some(checkpoint.state.round),
            )?;
            write_out(&args.out, &bytes)?;
        }
    }
    println!(
        "exported round {} of run {} ({} parameters) to {}",
        checkpoint.state.round,
        spec.run_id().short(),
        checkpoint.state.params.len(),
        args.out.display()
    );
    let model = starling_training::models::Model::new(&spec.model)?;
    for (name, var) in model.named_vars() {
        println!("  {name} {:?}", var.dims());
    }
    Ok(())
}

fn write_out(out: &Path, bytes: &[u8]) -> Result<()> {
    std::fs::write(out, bytes).with_context(|| format!("cannot write --out {}", out.display()))
}

/// `starling export` while a node runs on the datadir: its current model, as it serves it.
async fn export_from_running(args: &ExportArgs, datadir: &Datadir) -> Result<()> {
    let ExportFormat::Safetensors = args.format;
    let bytes = ask_running(datadir, "/model.safetensors").await?;
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes)
        .context("the running node sent a model that is not a safetensors file")?;
    let meta = header.metadata().clone().unwrap_or_default();
    write_out(&args.out, &bytes)?;
    println!(
        "exported round {} of run {} from the node running on {} to {}",
        meta.get(starling_training::init::ROUND_KEY).map_or("?", String::as_str),
        // The run id's first 8 bytes, as `RunId::short` prints them.
        meta.get(starling_training::init::RUN_ID_KEY).map_or("?", |id| id.get(..16).unwrap_or(id)),
        datadir.root().display(),
        args.out.display()
    );
    Ok(())
}

/// `starling spec show`: the spec as TOML, its run id first (as a comment).
pub fn spec_show(source: &SpecSource) -> Result<()> {
    let spec = source.load()?;
    print!("# run id: {}\n{}", spec.run_id(), spec.to_toml());
    Ok(())
}

/// `starling spec hash`: the run id.
pub fn spec_hash(source: &SpecSource) -> Result<()> {
    println!("{}", source.load()?.run_id());
    Ok(())
}

/// `starling config dump`: `run`'s options and where each came from.
pub fn config_dump(provenance: &Provenance) {
    print!("{}", crate::config::dump(provenance));
}
