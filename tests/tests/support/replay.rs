//! Shared by the metric tests: the recorded session, replayed without a kernel, against what
//! the live observer exported (here, not in the harness library: that may not link `observer`).

use e2e::accuracy::{DURATION, ENDS, Outcome, STARTED};
use temporal_observer::{export::Metrics, session::recording};

/// The session's recording, replayed through the observer's pipeline without a kernel, gives
/// exactly the values the live observer exported.
pub fn assert_replay_equals_export(outcome: &Outcome) -> anyhow::Result<()> {
    let (header, inputs) = recording::read(&outcome.recording)?;
    let snapshot = recording::replay(&header, &inputs, Metrics::in_memory()).snapshot();
    let received = &outcome.received;
    for metric in std::iter::once(STARTED).chain(ENDS) {
        let mut types = received.workflow_types(metric);
        types.extend(
            snapshot
                .counters
                .get(metric)
                .into_iter()
                .flatten()
                .map(|(t, _)| t.clone()),
        );
        types.sort();
        types.dedup();
        for ty in types {
            let replayed = snapshot
                .counters
                .get(metric)
                .and_then(|m| m.get(&ty))
                .copied();
            assert_eq!(
                replayed.unwrap_or(0) as i64,
                received.int(metric, &ty).unwrap_or(0),
                "{metric}{{workflow_type={ty}}}: replayed vs exported"
            );
        }
    }
    for (ty, (count, sum)) in &snapshot.durations {
        let (exported_count, exported_sum, _) =
            received.histogram(DURATION, ty).unwrap_or_default();
        assert_eq!(
            *count, exported_count,
            "{ty}: durations replayed vs exported"
        );
        assert!(
            (sum - exported_sum).abs() < 1e-9,
            "{ty}: {sum} vs {exported_sum}"
        );
    }
    assert_eq!(
        Some(snapshot.workers_running),
        received.int("compozy_temporal_workers_running_total", "")
    );
    Ok(())
}
