//! The attack report: every aggregation rule against every attack scenario at
//! several attacker fractions, next to the same rule with no attack, as one
//! table of the honest nodes' final accuracy and consensus distance.

use std::{fmt::Write as _, path::Path};

use serde::Serialize;
use starling_protocol::AggregationRule;

use crate::{attack::AttackBehaviour, Scenario, SimError};

/// One run of the matrix.
#[derive(Clone, Debug, Serialize)]
pub struct MatrixRow {
    pub rule: String,
    /// `none` for the no-attack run of the rule.
    pub attack: String,
    pub fraction: f64,
    pub attackers: usize,
    /// The honest nodes' final mean accuracy (or, for workloads without
    /// accuracy, their final loss).
    pub honest_accuracy: Option<f64>,
    pub honest_loss: f64,
    pub consensus_distance: f64,
    /// Messages refused by any node, all reasons.
    pub refused: u64,
}

/// Runs `scenarios` (attack scenarios; the first also gives the no-attack run)
/// under each rule and fraction. `progress` hears about every finished run.
pub fn run(
    scenarios: &[Scenario],
    rules: &[AggregationRule],
    fractions: &[f64],
    progress: &mut dyn FnMut(&MatrixRow, usize, usize),
) -> Result<Vec<MatrixRow>, SimError> {
    let Some(base) = scenarios.first() else { return Ok(Vec::new()) };
    let total = rules.len() * (1 + scenarios.len() * fractions.len());
    let mut rows = Vec::with_capacity(total);
    for &rule in rules {
        let mut quiet = base.clone();
        quiet.attack.fraction = 0.0;
        quiet.attack.behaviour = AttackBehaviour::None;
        let mut runs = vec![(quiet, "none".to_string())];
        for sc in scenarios {
            for &fraction in fractions {
                let mut sc = sc.clone();
                sc.attack.fraction = fraction;
                runs.push((sc.clone(), sc.attack.behaviour.name()));
            }
        }
        for (mut sc, attack) in runs {
            sc.protocol.aggregation = rule;
            let out = crate::run(&sc, false, &mut |_, _| {})?;
            let s = &out.summary;
            let row = MatrixRow {
                rule: rule.to_string(),
                attack,
                fraction: sc.attack.fraction,
                attackers: sc.attack.attackers(sc.nodes),
                honest_accuracy: s.final_mean_accuracy,
                honest_loss: s.final_loss,
                consensus_distance: s.final_consensus_distance,
                refused: s.refused_deltas.values().sum(),
            };
            rows.push(row);
            progress(rows.last().expect("just pushed"), rows.len(), total);
        }
    }
    Ok(rows)
}

/// A markdown table: one line per attack and fraction, one column per rule,
/// each cell the honest accuracy and its change against the rule's no-attack run.
pub fn markdown(rows: &[MatrixRow]) -> String {
    let mut rules: Vec<&str> = Vec::new();
    let mut lines: Vec<(String, f64)> = Vec::new();
    for r in rows {
        if !rules.contains(&r.rule.as_str()) {
            rules.push(&r.rule);
        }
        let key = (r.attack.clone(), r.fraction);
        if !lines.contains(&key) {
            lines.push(key);
        }
    }
    let cell = |rule: &str, attack: &str, fraction: f64| {
        rows.iter().find(|r| r.rule == rule && r.attack == attack && r.fraction == fraction)
    };
    let figure = |r: &MatrixRow| match r.honest_accuracy {
        Some(a) => (a * 100.0, "%"),
        None => (r.honest_loss, ""),
    };
    let mut md = String::new();
    let _ = writeln!(md, "| attack | attackers | {} |", rules.join(" | "));
    let _ = writeln!(md, "| --- | ---: |{}", " ---: |".repeat(rules.len()));
    for (attack, fraction) in &lines {
        let _ = write!(md, "| {attack} | {:.0}% |", fraction * 100.0);
        for rule in &rules {
            match (cell(rule, attack, *fraction), cell(rule, "none", 0.0)) {
                (Some(r), Some(quiet)) if attack != "none" => {
                    let ((v, unit), (q, _)) = (figure(r), figure(quiet));
                    let _ = write!(md, " {v:.2}{unit} ({:+.2}) cd {:.1e} |", v - q, r.consensus_distance);
                }
                (Some(r), _) => {
                    let (v, unit) = figure(r);
                    let _ = write!(md, " {v:.2}{unit} cd {:.1e} |", r.consensus_distance);
                }
                _ => md.push_str(" – |"),
            }
        }
        md.push('\n');
    }
    md
}

/// Writes `attacks.md`, `attacks.csv` and `attacks.json` to `dir`.
pub fn write(dir: &Path, rows: &[MatrixRow]) -> Result<(), SimError> {
    let io =
        |path: &Path, e: std::io::Error| SimError::Report(format!("cannot write {}: {e}", path.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut csv = String::from(
        "rule,attack,fraction,attackers,honest_accuracy,honest_loss,consensus_distance,refused\n",
    );
    for r in rows {
        let acc = r.honest_accuracy.map(|a| a.to_string()).unwrap_or_default();
        let _ = writeln!(
            csv,
            "{},{},{},{},{acc},{},{},{}",
            r.rule, r.attack, r.fraction, r.attackers, r.honest_loss, r.consensus_distance, r.refused
        );
    }
    let json = serde_json::to_string_pretty(rows).expect("rows serialize");
    for (name, text) in [("attacks.md", markdown(rows)), ("attacks.csv", csv), ("attacks.json", json)] {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    }
    Ok(())
}
