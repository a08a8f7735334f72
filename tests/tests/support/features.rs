//! Every workflow feature the SDKs offer beyond the end states (child workflows and each
//! parent-close policy, local activities, updates with a validator, signal-with-start, failing
//! and nondeterministic workflow tasks, retries, cron, terminations, resets), run by one SDK's
//! sample worker and checked against the Temporal server's own record of the same runs; and a
//! worker without a workflow cache. Each SDK's test file calls these with its worker.

use e2e::{
    Env, Features, GroundTruth, Mix, RunStatus, Worker,
    accuracy::{
        assert_matches_server, every_run_ended, observe_worker, observe_worker_until, terminated,
    },
    otlp::{Received, Transport},
};

const RUNS_TRACKED: &str = "temporal_observer_runs_tracked";
const RUNS_EXPIRED: &str = "temporal_observer_runs_expired_total";

fn count(truth: &GroundTruth, workflow_type: &str, status: RunStatus) -> usize {
    truth
        .runs
        .iter()
        .filter(|r| r.workflow_type == workflow_type && r.status == status)
        .count()
}

/// `test` names the test (its logs and task queue); `worker` is the SDK's sample worker.
pub fn every_sdk_feature_counts_what_the_server_records(
    test: &str,
    worker: fn(&Env) -> Worker,
) -> anyhow::Result<()> {
    let env = Env::require(test)?;
    let mix = Mix {
        features: Features::all(),
        ..Mix::every_end_state()
    };
    // Terminated runs leave the open-run table once idle this long: longer than any run here
    // waits between tasks (the long local activity, 3 s).
    let settled = |r: &Received, truth: &GroundTruth| {
        every_run_ended(r, truth)
            && r.int(RUNS_TRACKED, "") == Some(0)
            && r.int(RUNS_EXPIRED, "") == Some(terminated(truth) as i64)
    };
    let outcome = observe_worker_until(
        &env,
        &worker(&env),
        Transport::Http,
        &[],
        &["--idle-run-expiry-secs", "8"],
        &mix,
        &settled,
    )?;
    let truth = &outcome.truth;

    // The server recorded what each feature is meant to produce.
    let features = Features::all();
    assert_eq!(
        count(truth, "SignalWorkflow", RunStatus::Terminated),
        features.terminate + features.reset + features.parent_plans,
        "terminated: by the driver, by the resets, by a parent's close policy"
    );
    assert_eq!(
        count(truth, "RetryWorkflow", RunStatus::Failed),
        features.retry,
        "each retried workflow's first attempt is a failed run"
    );
    assert_eq!(
        count(truth, "RetryWorkflow", RunStatus::Completed),
        features.retry
    );
    assert_eq!(
        count(truth, "NondeterminismWorkflow", RunStatus::TimedOut),
        features.nondeterminism
    );
    let cron: Vec<_> = truth
        .runs
        .iter()
        .filter(|r| r.workflow_id.contains("-cron-"))
        .collect();
    assert!(
        cron.len() >= 2
            && cron
                .first()
                .is_some_and(|r| r.status == RunStatus::Completed)
            && cron.last().is_some_and(|r| r.status == RunStatus::TimedOut),
        "a cron chain: completed runs, then the one the server timed out: {cron:#?}"
    );

    // The worker really went through the sequences the features are about.
    let lines = &outcome.lines;
    let evicted_for = |reason: &str| {
        lines
            .iter()
            .filter(|l| l["probe"] == "eviction" && l["reason_name"] == reason)
            .count()
    };
    assert!(
        evicted_for("Nondeterminism") > 0,
        "a nondeterminism eviction"
    );
    assert!(
        evicted_for("LangFail") > 0,
        "the panicking task's eviction: {:?}",
        lines
            .iter()
            .filter(|l| l["probe"] == "eviction")
            .map(|l| l["reason_name"].to_string())
            .collect::<Vec<_>>()
    );
    let reset_seeds = lines
        .iter()
        .filter(|l| l["probe"] == "activation" && l["replaying"] == false)
        .filter(|l| {
            l["jobs"]
                .as_array()
                .is_some_and(|jobs| jobs.iter().any(|j| j == "UpdateRandomSeed"))
        })
        .count();
    assert_eq!(
        reset_seeds, features.reset,
        "one real task after each reset point"
    );

    assert_matches_server(&outcome);
    assert_eq!(
        outcome.received.int(RUNS_EXPIRED, ""),
        Some(terminated(truth) as i64),
        "every terminated run left the table"
    );
    Ok(())
}

/// With `max_cached_workflows = 0` every workflow task is a full replay from the run's start, so
/// each run's history is seen non-replaying once and replaying many times: counts stay exact.
pub fn without_a_cache_every_task_replays_and_counts_stay_exact(
    test: &str,
    worker: fn(&Env) -> Worker,
) -> anyhow::Result<()> {
    let env = Env::require(test)?;
    let mix = Mix {
        features: Features {
            parent_plans: 1,
            update: 1,
            signal_with_start: 1,
            flaky_task: 1,
            local_activity: 1,
            ..Features::default()
        },
        ..Mix::every_end_state()
    };
    let outcome = observe_worker(
        &env,
        &worker(&env),
        Transport::Http,
        &["--max-cached-workflows", "0"],
        &mix,
    )?;
    let replayed_starts = outcome
        .lines
        .iter()
        .filter(|l| l["probe"] == "activation" && l["replaying"] == true && l.get("init").is_some())
        .count();
    assert!(
        replayed_starts > 0,
        "with no cache, later tasks replay the run from its start"
    );
    assert_matches_server(&outcome);
    Ok(())
}
