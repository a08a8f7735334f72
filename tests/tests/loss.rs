//! Nothing is silently dropped: what the ring buffer could not take is counted and exported, and
//! what was lost never turns into a wrong or doubled end.

use std::{collections::BTreeMap, time::Duration};

use e2e::{DevServer, Env, Mix, Observer, RunStatus, drive, parse_events, start_worker, unique};
use serde_json::Value;

/// `events: activation=3 completion=3 … (lost=5 read_faults=0, …)` from an observer's last
/// summary: (records received, records lost).
fn summary(log: &str) -> anyhow::Result<(u64, u64)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("events: "))
        .ok_or_else(|| anyhow::anyhow!("no summary in:\n{log}"))?;
    let (counts, rest) = line
        .split_once("events: ")
        .map(|(_, r)| r.split_once(" (").unwrap_or((r, "")))
        .unwrap_or_default();
    let received = counts
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .filter_map(|(_, v)| v.parse::<u64>().ok())
        .sum();
    let lost = rest
        .split_once("lost=")
        .and_then(|(_, r)| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(u64::MAX);
    Ok((received, lost))
}

#[test]
fn a_tiny_ring_buffer_loses_events_counts_them_exactly_and_never_invents_an_end()
-> anyhow::Result<()> {
    let env = Env::require("loss")?;
    let server = DevServer::start(&env)?;
    let task_queue = unique("loss");
    let worker = start_worker(&env, &server, &task_queue, &[])?;
    let reference = Observer::attach(&env, worker.pid(), &["--no-export"])?;
    let addr = format!("127.0.0.1:{}", e2e::free_port()?);
    // One page of ring buffer, never woken, drained once a second: a burst overflows it.
    let tiny = Observer::attach(
        &env,
        worker.pid(),
        &[
            "--no-export",
            "--prometheus-listen",
            &addr,
            "--ring-buffer-bytes",
            "4096",
            "--wakeup-bytes",
            "1000000",
            "--drain-interval-ms",
            "1000",
            "--print-updates",
            "--format",
            "json",
        ],
    )?;
    // Server-enforced timeouts too: a run whose end is lost must not be inferred timed out.
    let mix = Mix {
        complete: 20,
        fail: 5,
        server_timeout: 3,
        server_timeout_ms: 2000,
        input_bytes: 0,
        ..Mix::default()
    };
    let truth = drive(&env, &server, &task_queue, &task_queue, &mix)?;
    std::thread::sleep(Duration::from_secs(3));
    let scraped = e2e::scrape_prometheus(&addr)?;
    let exported_lost = scraped.get("temporal_observer_events_lost_total").copied();
    let affected = scraped
        .get("temporal_observer_runs_affected_by_loss_total")
        .copied();
    let (status, stdout, tiny_log) = tiny.stop()?;
    assert!(status.success(), "{tiny_log}");
    let (status, _, reference_log) = reference.stop()?;
    assert!(status.success(), "{reference_log}");

    let (all, none_lost) = summary(&reference_log)?;
    let (received, lost) = summary(&tiny_log)?;
    assert_eq!(
        none_lost, 0,
        "the reference observer must see everything:\n{reference_log}"
    );
    assert!(
        lost > 0,
        "the tiny buffer was expected to overflow:\n{tiny_log}"
    );
    assert_eq!(
        received + lost,
        all,
        "every record is either received or counted as lost"
    );
    assert_eq!(
        exported_lost,
        Some(lost as f64),
        "temporal_observer_events_lost_total"
    );
    assert!(
        tiny_log.contains("events were lost because the ring buffer was full"),
        "{tiny_log}"
    );
    assert!(
        affected.is_some_and(|n| n > 0.0),
        "runs open during the loss are marked: {affected:?}"
    );

    // Whatever the lossy observer did count is right: no run ends twice, none with a wrong state.
    let server_end: BTreeMap<&str, RunStatus> = truth
        .runs
        .iter()
        .map(|r| (r.run_id.as_str(), r.status))
        .collect();
    let mut ended: BTreeMap<String, u32> = BTreeMap::new();
    for update in parse_events(&stdout)?
        .iter()
        .filter(|u| u["update"] == "run_ended")
    {
        let run_id = update["run_id"].as_str().unwrap_or_default();
        *ended.entry(run_id.to_string()).or_default() += 1;
        let expected = match server_end.get(run_id) {
            Some(RunStatus::Completed) => "completed",
            Some(RunStatus::Failed) => "failed",
            Some(RunStatus::TimedOut) => "timed_out",
            other => panic!("run {run_id} ended by the observer is {other:?} on the server"),
        };
        assert_eq!(update["end"], Value::from(expected), "run {run_id}");
    }
    assert!(
        ended.values().all(|n| *n == 1),
        "an end counted twice: {ended:?}"
    );
    Ok(())
}
