//! Live mode: real node stacks in one process (pending).

use crate::{RunOutput, Scenario, SimError};

/// Runs the scenario with real node stacks.
pub fn run(_scenario: &Scenario, _progress: &mut dyn FnMut(u64, u64)) -> Result<RunOutput, SimError> {
    Err(SimError::Live("not yet available".into()))
}
