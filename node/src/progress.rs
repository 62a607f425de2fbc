//! The live progress line of `starling run` on a terminal: round, loss,
//! accuracy, peers and bytes in/out, redrawn in place. When stdout is not a
//! terminal there is no line, only the structured log.

use std::{io::IsTerminal, time::Duration};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::{sync::mpsc, task::JoinHandle};

use crate::{
    local_swarm::human_bytes,
    node::{NodeEvent, RoundReport},
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
        Some(eval) => format!("acc {:.2}%", eval.accuracy * 100.0),
        None => "acc - (--evaluate)".into(),
    };
    format!(
        "loss {:.4} | {accuracy} | peers {} | in {} | out {}",
        report.train_loss,
        report.peers,
        human_bytes(report.traffic.received as f64),
        human_bytes(report.traffic.sent as f64)
    )
}
