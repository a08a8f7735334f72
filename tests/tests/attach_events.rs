//! `temporal-observer attach --pid` on the real sample worker, with a real dev server: the raw
//! events must tell every run's start, type and end exactly as the server records them.

use std::collections::HashMap;

use e2e::{DevServer, Env, Mix, Observer, RunStatus, drive, parse_events, start_worker, unique};
use serde_json::Value;

fn str_field<'a>(event: &'a Value, key: &str) -> &'a str {
    event.get(key).and_then(Value::as_str).unwrap_or_default()
}

#[test]
fn raw_events_match_the_servers_record() -> anyhow::Result<()> {
    let env = Env::require("attach_events")?;
    let server = DevServer::start(&env)?;
    let task_queue = unique("attach-events");
    let worker = start_worker(&env, &server, &task_queue, &[])?;
    let observer = Observer::attach(&env, worker.pid(), &["--print-events", "--format", "json"])?;

    let mix = Mix::every_end_state();
    let truth = drive(&env, &server, &task_queue, &task_queue, &mix)?;
    // The last run's end and eviction reach the ring buffer within a drain interval.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let (status, stdout, log) = observer.stop()?;
    assert!(
        status.success(),
        "observer exited with {status}; log:\n{log}"
    );
    assert!(
        log.contains("lost=0 read_faults=0, undecodable=0"),
        "events were lost or unreadable:\n{log}"
    );
    assert!(log.contains("detached from PID"), "{log}");

    let events = parse_events(&stdout)?;
    assert!(
        events
            .iter()
            .all(|e| e["pid"].as_u64() == Some(u64::from(worker.pid())))
    );
    let expected_runs = 3 + 2 + 2 + 2 + 2 + 2 * 3 + 2;
    assert_eq!(truth.runs.len(), expected_runs, "the server's record");

    let mut starts: HashMap<&str, Vec<&Value>> = HashMap::new();
    let mut terminals: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut timeout_failures: HashMap<&str, bool> = HashMap::new();
    let mut endings: HashMap<&str, usize> = HashMap::new();
    for event in &events {
        let run_id = str_field(event, "run_id");
        match str_field(event, "probe") {
            "activation" if event.get("init").is_some() => {
                starts.entry(run_id).or_default().push(event)
            }
            "completion" => {
                if let Some(kind) = event.get("terminal").and_then(Value::as_str) {
                    terminals.entry(run_id).or_default().push(kind);
                    timeout_failures.insert(run_id, event["timeout_failure"] == true);
                }
            }
            "eviction" if event["reason_name"] == "WorkflowExecutionEnding" => {
                *endings.entry(run_id).or_default() += 1
            }
            _ => {}
        }
    }

    for run in &truth.runs {
        let id = run.run_id.as_str();
        let run_starts = starts.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            run_starts.len(),
            1,
            "run {id} ({}) must start exactly once: {run_starts:?}",
            run.workflow_type
        );
        let init = &run_starts[0]["init"];
        assert_eq!(run_starts[0]["replaying"], false, "run {id}");
        assert_eq!(
            init["workflow_type"],
            run.workflow_type.as_str(),
            "run {id}"
        );
        let start = init["start_time_unix_nanos"].as_i64().expect("start time") as i128;
        let skew = (start - run.start_time_unix_nanos as i128).abs();
        assert!(
            skew < 1_000_000,
            "run {id}: start time {start} vs server {} ",
            run.start_time_unix_nanos
        );

        let expected_terminal = match run.status {
            RunStatus::Completed => Some("complete"),
            RunStatus::Failed => Some("fail"),
            RunStatus::Canceled => Some("cancel"),
            RunStatus::ContinuedAsNew => Some("continue_as_new"),
            // The server enforces the timeout; the worker hands nothing in.
            RunStatus::TimedOut => None,
            other => panic!("run {id}: unexpected server status {other:?}"),
        };
        let seen = terminals.get(id).cloned().unwrap_or_default();
        match expected_terminal {
            Some(kind) => {
                assert_eq!(
                    seen,
                    vec![kind],
                    "run {id} ({}) is {:?} on the server",
                    run.workflow_type,
                    run.status
                );
                assert_eq!(
                    endings.get(id),
                    Some(&1),
                    "run {id}: one WorkflowExecutionEnding eviction"
                );
            }
            None => {
                assert!(
                    seen.is_empty(),
                    "run {id} timed out on the server, yet the worker ended it: {seen:?}"
                );
                assert_eq!(
                    init["execution_timeout_nanos"].as_i64(),
                    Some(mix.server_timeout_ms as i64 * 1_000_000)
                );
            }
        }
        assert_eq!(
            run.failure_is_timeout,
            run.workflow_type == "ActivityTimeoutWorkflow",
            "run {id}: only activity-timeout runs fail with a timeout cause"
        );
        if expected_terminal.is_some() {
            assert_eq!(
                timeout_failures.get(id),
                Some(&run.failure_is_timeout),
                "run {id}: the probe must see the timeout in the failure's cause chain exactly when the server does"
            );
        }
    }
    let worker_starts: Vec<&Value> = events
        .iter()
        .filter(|e| e["probe"] == "worker_start")
        .collect();
    // The worker polled before the observer attached; its next poll reveals it, exactly once.
    assert_eq!(worker_starts.len(), 1, "{worker_starts:?}");
    assert_eq!(worker_starts[0]["task_queue"], task_queue.as_str());
    for run_id in terminals.keys() {
        assert!(
            truth.runs.iter().any(|r| r.run_id == *run_id),
            "terminal event for unknown run {run_id}"
        );
    }
    Ok(())
}
