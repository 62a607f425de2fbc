//! The options of `run` as TOML: the commented defaults `starling init` writes
//! to config.toml, and the resolved values with their sources that
//! `starling config dump` prints.

use std::any::TypeId;

use clap::{ArgAction, ArgMatches};

use super::{env_var, expected, file_args, Provenance, Source};

/// A resolved option's value as TOML: booleans for flags, arrays for options
/// that take several values, numbers for numeric options, strings otherwise.
pub(crate) fn value_of(arg: &clap::Arg, matches: &ArgMatches) -> Option<toml::Value> {
    let id = arg.get_id().as_str();
    if matches!(arg.get_action(), ArgAction::SetTrue) {
        return Some(toml::Value::Boolean(matches.get_flag(id)));
    }
    let raw: Vec<String> = match matches.get_raw(id) {
        Some(values) => values.map(|v| v.to_string_lossy().into_owned()).collect(),
        None => Vec::new(),
    };
    typed(arg, &raw)
}

fn typed(arg: &clap::Arg, raw: &[String]) -> Option<toml::Value> {
    let mut values = raw.iter().map(|text| scalar(arg, text));
    if matches!(arg.get_action(), ArgAction::Append) {
        Some(toml::Value::Array(values.collect()))
    } else {
        values.next()
    }
}

fn scalar(arg: &clap::Arg, text: &str) -> toml::Value {
    let ty = arg.get_value_parser().type_id();
    let integer = [TypeId::of::<u64>(), TypeId::of::<usize>(), TypeId::of::<u32>(), TypeId::of::<u16>()]
        .into_iter()
        .any(|t| ty == t);
    let float = ty == TypeId::of::<f64>() || ty == TypeId::of::<f32>();
    match (integer, float) {
        (true, _) => text.parse().map(toml::Value::Integer).unwrap_or_else(|_| text.into()),
        (_, true) => text.parse().map(toml::Value::Float).unwrap_or_else(|_| text.into()),
        _ => text.into(),
    }
}

/// `starling config dump`: every option of `run` as TOML, each with its source.
pub fn dump(provenance: &Provenance) -> String {
    let file = match &provenance.file {
        Some(path) => format!("{} (read)", path.display()),
        None => "none (no config.toml in the datadir)".into(),
    };
    let mut out = format!(
        "# `starling run` options, resolved: flags > STARLING_* environment > config.toml > defaults\n# config file: {file}\n"
    );
    let lines: Vec<(String, &Source)> = provenance
        .values
        .iter()
        .map(|r| match &r.value {
            Some(value) => (format!("{} = {value}", r.key), &r.source),
            None => (format!("# {} (not set)", r.key), &r.source),
        })
        .collect();
    let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    for (line, source) in lines {
        match source {
            Source::Unset => out.push_str(&format!("{line}\n")),
            _ => out.push_str(&format!("{line:width$}  # {source}\n")),
        }
    }
    out
}

/// The config.toml `starling init` writes: every option `run` reads from the
/// file, commented out at its default, with its help and variable.
/// `command` is the `starling` command ([`crate::cli::command`]).
pub fn commented_defaults(command: &clap::Command) -> String {
    let mut out = String::from(
        "# Options of `starling run` for this datadir, written by `starling init`.\n\
         # Precedence: command-line flags, then STARLING_* environment variables,\n\
         # then this file, then the defaults shown. Keys are the long flags of\n\
         # `starling run` (see `starling run --help`); uncomment a line to set it.\n\
         # Relative paths are taken from the datadir. `starling config dump` prints\n\
         # the resolved options and where each came from.\n",
    );
    let run = command.find_subcommand("run").expect("run is a subcommand");
    for arg in file_args(run) {
        let key = arg.get_long().expect("file options have a long flag");
        out.push('\n');
        if let Some(help) = arg.get_help() {
            for line in wrap(&help.to_string(), 76) {
                out.push_str(&format!("# {line}\n"));
            }
        }
        let var = arg.get_env().map(|v| v.to_string_lossy().into_owned()).unwrap_or_else(|| env_var(key));
        out.push_str(&format!("# Takes {}; environment: {var}.\n", expected(arg)));
        let defaults: Vec<String> =
            arg.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
        let value = if matches!(arg.get_action(), ArgAction::SetTrue) {
            "false".to_string()
        } else if defaults.is_empty() && !matches!(arg.get_action(), ArgAction::Append) {
            let name = arg.get_value_names().and_then(|n| n.first()).map(|n| n.to_string());
            format!("<{}>  (not set by default)", name.unwrap_or_else(|| key.to_ascii_uppercase()))
        } else {
            typed(arg, &defaults).map(|v| v.to_string()).unwrap_or_default()
        };
        out.push_str(&format!("# {key} = {value}\n"));
    }
    out
}

fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = vec![String::new()];
    for word in text.split_whitespace() {
        let line = lines.last_mut().expect("one line");
        if !line.is_empty() && line.len() + 1 + word.len() > width {
            lines.push(word.to_string());
        } else {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(word);
        }
    }
    lines
}
