//! The live progress line of `starling run` on a terminal: round, loss,
//! accuracy, peers and bytes in/out, redrawn in place. When stdout is not a
//! terminal there is no line, only the structured log.

use std::{io::IsTerminal, time::Duration};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    node::{NodeEvent, RoundReport},
    units::human_bytes,
};

/// A progress line fed by the node's events.
pub struct ProgressLine {
    events: mpsc::UnboundedSender<NodeEvent>,
    task: JoinHandle<()>,
}

impl ProgressLine {
    /// A progress line on stdout when it is a terminal; `None` otherwise.
    pub fn on_terminal(rounds: Option<u64>) -> Option<Self> {
        std::io::stdout().is_terminal().then(|| Self::start(rounds, ProgressDrawTarget::stdout()))
    }

    fn start(rounds: Option<u64>, target: ProgressDrawTarget) -> Self {
        let bar = match rounds {
            Some(rounds) => ProgressBar::with_draw_target(Some(rounds), target).with_style(
                ProgressStyle::with_template("{spinner} round {pos}/{len} {wide_msg}")
                    .expect("valid template"),
            ),
            None => ProgressBar::with_draw_target(None, target).with_style(
                ProgressStyle::with_template("{spinner} round {pos} {wide_msg}").expect("valid template"),
            ),
        };
        bar.set_message("starting: waiting for peers");
        bar.enable_steady_tick(Duration::from_millis(200));
        crate::logging::set_progress_line(Some(bar.clone()));
        let (events, mut rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                match event {
                    NodeEvent::Round(report) => {
                        bar.set_position(report.round + 1);
                        bar.set_message(line(&report));
                    }
                    NodeEvent::StateInstalled { round, .. } => bar.set_position(round),
                    _ => {}
                }
            }
            crate::logging::set_progress_line(None);
            bar.finish();
            // The line stays; what is logged after it starts below it.
            if !bar.is_hidden() {
                println!();
            }
        });
        Self { events, task }
    }

    /// Where the node sends its events.
    pub fn events(&self) -> mpsc::UnboundedSender<NodeEvent> {
        self.events.clone()
    }

    /// Leaves the last line on the terminal, once the node has stopped.
    pub async fn finish(self) {
        drop(self.events);
        let _ = self.task.await;
    }
}

/// The text of the line after a merged round.
pub fn line(report: &RoundReport) -> String {
    let accuracy = match &report.eval {
        Some(eval) => format!(
            "acc {:.2}% | held-out {:.4} (ppl {:.1})",
            eval.accuracy * 100.0,
            eval.loss,
            eval.perplexity()
        ),
        None => "acc - (--evaluate)".into(),
    };
    let privacy = report.epsilon.map(|e| format!(" | ε {e:.2}")).unwrap_or_default();
    let loss = if report.train_loss.is_finite() {
        format!("loss {:.4}", report.train_loss)
    } else {
        "loss - (not trained)".into()
    };
    format!(
        "{loss} | {accuracy} | peers {} | in {} | out {}{privacy}",
        report.peers,
        human_bytes(report.traffic.received as f64),
        human_bytes(report.traffic.sent as f64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_protocol::{round::CloseReason, PublicKey};

    fn report(train_loss: f32, epsilon: Option<f64>) -> RoundReport {
        RoundReport {
            node: PublicKey::of(&ed25519_dalek::SigningKey::from_bytes(&[1; 32])),
            round: 3,
            train_loss,
            eval: None,
            peers: 2,
            merged: 3,
            reason: CloseReason::Quorum,
            traffic: crate::metrics::Traffic { sent: 2048, received: 4096 },
            epsilon,
            params: None,
        }
    }

    #[test]
    fn the_line_shows_epsilon_in_a_private_run_and_no_nan_loss() {
        let private = line(&report(0.5, Some(2.345)));
        assert!(private.starts_with("loss 0.5000 |") && private.ends_with("| ε 2.35"), "{private}");
        assert!(!line(&report(0.5, None)).contains('ε'));
        let sat_out = line(&report(f32::NAN, Some(8.0)));
        assert!(sat_out.starts_with("loss - (not trained)") && !sat_out.contains("NaN"), "{sat_out}");
    }
}
