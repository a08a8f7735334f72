//! The table `--print-metrics` shows.

use super::{Snapshot, name};

/// Human-readable table of a snapshot, for `--print-metrics`.
pub fn format_snapshot(snapshot: &Snapshot) -> String {
    let mut types: Vec<&String> = snapshot.counters.values().flat_map(|m| m.keys()).collect();
    types.sort();
    types.dedup();
    let columns = [
        ("started", name::STARTED),
        ("completed", name::COMPLETED),
        ("failed", name::FAILED),
        ("canceled", name::CANCELED),
        ("timed_out", name::TIMED_OUT),
        ("cont_as_new", name::CONTINUED_AS_NEW),
    ];
    let mut out = format!("{:<28}", "workflow_type");
    for (label, _) in columns {
        out.push_str(&format!("{label:>12}"));
    }
    out.push_str(&format!("{:>14}\n", "mean_dur_s"));
    for ty in types {
        out.push_str(&format!("{ty:<28}"));
        for (_, metric) in columns {
            let value = snapshot
                .counters
                .get(metric)
                .and_then(|m| m.get(ty))
                .copied()
                .unwrap_or(0);
            out.push_str(&format!("{value:>12}"));
        }
        let mean = snapshot
            .durations
            .get(ty)
            .filter(|(n, _)| *n > 0)
            .map(|(n, sum)| sum / *n as f64);
        out.push_str(
            &mean
                .map(|m| format!("{m:>14.3}\n"))
                .unwrap_or_else(|| format!("{:>14}\n", "-")),
        );
    }
    out.push_str(&format!(
        "workers running: {}   workers configured: {}\n",
        snapshot.workers_running, snapshot.workers_configured
    ));
    out
}
