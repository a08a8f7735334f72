//! What the Temporal server recorded for a set of runs: the ground truth every end-to-end test
//! compares the observer against. Written by the workload driver, read by the tests.

use serde::{Deserialize, Serialize};

/// How the server says a run closed. Names follow the server's `WorkflowExecutionStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RunStatus {
    Running,
    Completed,
    Failed,
    Canceled,
    Terminated,
    ContinuedAsNew,
    TimedOut,
}

/// One run as the Temporal server records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruthRun {
    pub workflow_id: String,
    pub run_id: String,
    pub workflow_type: String,
    pub status: RunStatus,
    /// True for a `Failed` run whose failure's cause chain holds a timeout failure.
    pub failure_is_timeout: bool,
    /// Whether any worker ran a task of the run. A run the server closed before that (a cron
    /// or retry run waiting for its time) was never seen by a worker. Absent in records written
    /// before it existed, where every run ran.
    #[serde(default = "ran_by_default")]
    pub ran: bool,
    pub start_time_unix_nanos: u128,
    pub close_time_unix_nanos: u128,
}

/// What the driver writes once every run it started has closed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub namespace: String,
    pub task_queue: String,
    pub runs: Vec<GroundTruthRun>,
}

fn ran_by_default() -> bool {
    true
}
