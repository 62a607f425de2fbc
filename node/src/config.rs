//! The options of `starling run`, in layers: command-line flags, then
//! `STARLING_*` environment variables, then the datadir's `config.toml`, then
//! the defaults.
//!
//! clap's `RunArgs` is the one place an option is declared: every long flag of
//! `run` gets the variable `STARLING_<FLAG>` (unless it names its own) and the
//! config.toml key `<flag>`, so adding a clap arg is all it takes to add an
//! option to every layer. The file layer works by handing its values to clap as
//! flags wherever no flag or variable set them, so a value from the file is
//! parsed and checked exactly like the same flag; each value's source is kept
//! for `starling config dump`.

mod render;

use std::{
    any::TypeId,
    ffi::OsString,
    path::{Path, PathBuf},
};

use clap::{builder::BoolishValueParser, parser::ValueSource, ArgAction, ArgMatches};
use libp2p::Multiaddr;

pub use render::{commented_defaults, dump};

use crate::dirs::Datadir;

/// Options of `run` that config.toml cannot set.
const NOT_IN_FILE: &[(&str, &str)] =
    &[("datadir", "the file lives in the datadir; pass --datadir or STARLING_DATADIR")];

/// Where one resolved value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    Flag,
    Env(String),
    File(PathBuf),
    Default,
    /// Not set anywhere and no default.
    Unset,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => write!(f, "flag"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::File(path) => write!(f, "config.toml ({})", path.display()),
            Source::Default => write!(f, "default"),
            Source::Unset => write!(f, "not set"),
        }
    }
}

/// One option of `run`, resolved: its config key, its value (none when unset) and its source.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub key: String,
    pub value: Option<toml::Value>,
    pub source: Source,
}

/// Every option of `run` with its source, in the order `--help` lists them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Provenance {
    pub datadir: PathBuf,
    /// The config file that was read, if there was one.
    pub file: Option<PathBuf>,
    pub values: Vec<Resolved>,
}

impl Provenance {
    pub fn get(&self, key: &str) -> Option<&Resolved> {
        self.values.iter().find(|r| r.key == key)
    }
}

/// Why the options could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A bad flag or variable; clap's own message (and `--help`).
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error("cannot read the config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("the config file {path} has an unknown key `{key}`; its keys are the long flags of `starling run`: {known}")]
    UnknownKey { path: PathBuf, key: String, known: String },
    #[error("the config file {path} cannot set `{key}`: {why}")]
    NotSettable { path: PathBuf, key: String, why: String },
    #[error("the environment variable {var} is invalid: {reason} (fix or unset {var})")]
    BadEnv { var: String, reason: String },
    #[error("the config file {path} has an invalid `{key} = {value}`: {reason}; expected {expected} (fix or remove the key in {path})")]
    BadValue { path: PathBuf, key: String, value: String, reason: String, expected: String },
}

/// `command` (the `starling` command) with the environment layer added to the
/// options of `run` (and of `config dump`, which takes them).
pub fn with_env_layer(command: clap::Command) -> clap::Command {
    command
        .mut_subcommand("run", with_env)
        .mut_subcommand("config", |config| config.mut_subcommand("dump", with_env))
}

/// Gives every long flag that has no variable of its own `STARLING_<FLAG>`;
/// boolean flags read 1/0, true/false, yes/no, on/off from it.
fn with_env(command: clap::Command) -> clap::Command {
    command.mut_args(|arg| {
        let Some(long) = arg.get_long() else { return arg };
        if arg.get_env().is_some() || long == "help" {
            return arg;
        }
        let var: &'static str = Box::leak(env_var(long).into_boxed_str());
        let arg = arg.env(var);
        match arg.get_action() {
            ArgAction::SetTrue => arg.value_parser(BoolishValueParser::new()),
            _ => arg,
        }
    })
}

/// The environment variable of a flag: `--wait-peers` reads `STARLING_WAIT_PEERS`.
pub fn env_var(long: &str) -> String {
    format!("STARLING_{}", long.to_ascii_uppercase().replace('-', "_"))
}

/// Parses the command line by `command` (with [`with_env_layer`] applied)
/// with every layer: flags, environment, the datadir's config.toml; returns
/// the matches and, for `run` (or `config dump`), where each option came from.
pub fn parse_layered<I, T>(
    command: clap::Command,
    args: I,
) -> Result<(ArgMatches, Option<Provenance>), ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let first = command.clone().try_get_matches_from(&args).map_err(|e| blame_env(e, &args))?;
    let Some(run) = run_matches(&first) else {
        return Ok((first, None));
    };
    let run_command = command.find_subcommand("run").expect("run is a subcommand");
    let datadir = Datadir::resolve(run.get_one::<PathBuf>("datadir").map(PathBuf::as_path));
    let path = datadir.config_file();
    let table = read_file(&path)?;
    let mut injected = Vec::new();
    let mut from_file = Vec::new();
    if let Some(table) = &table {
        for (raw_key, value) in table {
            let key = raw_key.replace('_', "-");
            let arg = file_arg(run_command, &path, &key)?;
            let id = arg.get_id().as_str();
            if matches!(run.value_source(id), Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
                continue;
            }
            injected.extend(as_flags(arg, &key, value, datadir.root(), &path)?);
            from_file.push(id.to_string());
        }
    }
    let mut all = args.clone();
    all.extend(injected.into_iter().map(OsString::from));
    let matches = command
        .clone()
        .try_get_matches_from(&all)
        .map_err(|e| blame_file(e, table.as_ref(), &path, run_command))?;
    let run = run_matches(&matches).expect("same subcommand");
    let provenance = provenance(run_command, run, &datadir, &path, table.is_some(), &from_file);
    Ok((matches, Some(provenance)))
}

/// The matches of `run`'s options: `run` itself or `config dump`.
fn run_matches(matches: &ArgMatches) -> Option<&ArgMatches> {
    match matches.subcommand() {
        Some(("run", run)) => Some(run),
        Some(("config", config)) => match config.subcommand() {
            Some(("dump", dump)) => Some(dump),
            _ => None,
        },
        _ => None,
    }
}

fn read_file(path: &Path) -> Result<Option<toml::Table>, ConfigError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(ConfigError::Read { path: path.to_path_buf(), source }),
    };
    text.parse::<toml::Table>().map(Some).map_err(|e| ConfigError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string().trim().to_string(),
    })
}

/// The options config.toml may set: the long flags of `run`, but `--datadir` and `--help`.
pub(crate) fn file_args(run: &clap::Command) -> impl Iterator<Item = &clap::Arg> {
    run.get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| l != "help" && !NOT_IN_FILE.iter().any(|(k, _)| *k == l)))
}

fn file_arg<'a>(run: &'a clap::Command, path: &Path, key: &str) -> Result<&'a clap::Arg, ConfigError> {
    if let Some((_, why)) = NOT_IN_FILE.iter().find(|(k, _)| *k == key) {
        return Err(ConfigError::NotSettable {
            path: path.to_path_buf(),
            key: key.into(),
            why: (*why).into(),
        });
    }
    file_args(run).find(|a| a.get_long() == Some(key)).ok_or_else(|| ConfigError::UnknownKey {
        path: path.to_path_buf(),
        key: key.into(),
        known: file_args(run).filter_map(|a| a.get_long()).collect::<Vec<_>>().join(", "),
    })
}

/// A config value as `--key=value` flags, or an error saying what the key takes.
fn as_flags(
    arg: &clap::Arg,
    key: &str,
    value: &toml::Value,
    datadir: &Path,
    path: &Path,
) -> Result<Vec<String>, ConfigError> {
    let bad = |reason: &str| ConfigError::BadValue {
        path: path.to_path_buf(),
        key: key.into(),
        value: value.to_string(),
        reason: reason.into(),
        expected: expected(arg),
    };
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return match value {
            toml::Value::Boolean(true) => Ok(vec![format!("--{key}")]),
            toml::Value::Boolean(false) => Ok(vec![]),
            _ => Err(bad("not a boolean")),
        };
    }
    let multi = matches!(arg.get_action(), ArgAction::Append);
    let items: Vec<&toml::Value> = match value {
        toml::Value::Array(items) if multi => items.iter().collect(),
        toml::Value::Array(_) => return Err(bad("a list where one value goes")),
        one => vec![one],
    };
    let is_path = arg.get_value_parser().type_id() == TypeId::of::<PathBuf>();
    items
        .into_iter()
        .map(|item| {
            let text = match item {
                toml::Value::String(s) if is_path && Path::new(s).is_relative() => {
                    datadir.join(s).display().to_string()
                }
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(n) => n.to_string(),
                toml::Value::Float(x) => x.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                _ => return Err(bad("a table, list or date where a plain value goes")),
            };
            Ok(format!("--{key}={text}"))
        })
        .collect()
}

/// What an option takes, in words.
pub(crate) fn expected(arg: &clap::Arg) -> String {
    let one = {
        let possible = arg.get_possible_values();
        let ty = arg.get_value_parser().type_id();
        let is = |t: TypeId| ty == t;
        if matches!(arg.get_action(), ArgAction::SetTrue) {
            return "true or false".into();
        } else if !possible.is_empty() {
            let names: Vec<_> = possible.iter().map(|p| format!("\"{}\"", p.get_name())).collect();
            format!("one of {}", names.join(", "))
        } else if [TypeId::of::<u64>(), TypeId::of::<usize>(), TypeId::of::<u32>(), TypeId::of::<u16>()]
            .into_iter()
            .any(is)
        {
            "a whole number".into()
        } else if is(TypeId::of::<f64>()) || is(TypeId::of::<f32>()) {
            "a number".into()
        } else if is(TypeId::of::<PathBuf>()) {
            "a path (a relative one is taken from the datadir)".into()
        } else if is(TypeId::of::<Multiaddr>()) {
            "a multiaddr such as \"/ip4/0.0.0.0/tcp/9000\"".into()
        } else {
            let name = arg.get_long().unwrap_or_default();
            format!("what --{name} takes (see `starling run --help`)")
        }
    };
    if matches!(arg.get_action(), ArgAction::Append) {
        format!("{one}, or a list of them")
    } else {
        one
    }
}

/// Turns clap's complaint about a value no flag gave into one that names its variable.
fn blame_env(error: clap::Error, args: &[OsString]) -> ConfigError {
    use clap::error::{ContextKind, ContextValue};
    let Some(ContextValue::String(arg)) = error.get(ContextKind::InvalidArg) else {
        return error.into();
    };
    let Some(flag) = arg.split([' ', '=']).next().filter(|f| f.starts_with("--")) else {
        return error.into();
    };
    let given =
        args.iter().any(|a| a.to_str().is_some_and(|a| a == flag || a.starts_with(&format!("{flag}="))));
    let var = env_var(&flag[2..]);
    if given || std::env::var_os(&var).is_none() {
        return error.into();
    }
    let reason = error.render().to_string();
    let reason = reason.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
    ConfigError::BadEnv { var, reason }
}

/// Turns clap's complaint about a value that came from the file into one that names the file and key.
fn blame_file(
    error: clap::Error,
    table: Option<&toml::Table>,
    path: &Path,
    run: &clap::Command,
) -> ConfigError {
    use clap::error::{ContextKind, ContextValue};
    let (Some(table), Some(ContextValue::String(arg))) = (table, error.get(ContextKind::InvalidArg)) else {
        return error.into();
    };
    let Some((key, value)) = table.iter().find(|(k, _)| {
        let flag = format!("--{}", k.replace('_', "-"));
        arg == &flag || arg.starts_with(&format!("{flag} ")) || arg.starts_with(&format!("{flag}="))
    }) else {
        return error.into();
    };
    let reason = error.render().to_string();
    let reason = reason.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
    let expected = run
        .get_arguments()
        .find(|a| a.get_long() == Some(&key.replace('_', "-")))
        .map(expected)
        .unwrap_or_default();
    ConfigError::BadValue {
        path: path.to_path_buf(),
        key: key.clone(),
        value: value.to_string(),
        reason,
        expected,
    }
}

fn provenance(
    run_command: &clap::Command,
    run: &ArgMatches,
    datadir: &Datadir,
    path: &Path,
    file_read: bool,
    from_file: &[String],
) -> Provenance {
    let values = run_command
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| l != "help"))
        .map(|arg| {
            let id = arg.get_id().as_str();
            let key = arg.get_long().expect("filtered").to_string();
            let source = if from_file.iter().any(|f| f == id) {
                Source::File(path.to_path_buf())
            } else {
                match run.value_source(id) {
                    Some(ValueSource::CommandLine) => Source::Flag,
                    Some(ValueSource::EnvVariable) => Source::Env(
                        arg.get_env().map(|v| v.to_string_lossy().into_owned()).unwrap_or_default(),
                    ),
                    Some(ValueSource::DefaultValue) => Source::Default,
                    _ if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::Append) => {
                        Source::Default
                    }
                    _ if id == "datadir" => Source::Default,
                    _ => Source::Unset,
                }
            };
            let value = if id == "datadir" {
                Some(toml::Value::String(datadir.root().display().to_string()))
            } else {
                render::value_of(arg, run)
            };
            Resolved { key, value, source }
        })
        .collect();
    Provenance { datadir: datadir.root().to_path_buf(), file: file_read.then(|| path.to_path_buf()), values }
}

#[cfg(test)]
mod tests;
