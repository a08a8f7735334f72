//! The end-to-end accuracy check: a workload on a real worker, observed and exported to a real
//! OTLP receiver, compared with the Temporal server's own record of the same runs. Shared by the
//! metric tests and the build matrix.

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde_json::Value;

use crate::{
    DevServer, Env, GroundTruth, GroundTruthRun, Mix, Observer, RunStatus, Worker, drive,
    otlp::{Received, Receiver, Transport},
    parse_events, unique,
};

pub const STARTED: &str = "compozy_temporal_workflow_started_total";
pub const ENDS: [&str; 5] = [
    "compozy_temporal_workflow_completed_total",
    "compozy_temporal_workflow_failed_total",
    "compozy_temporal_workflow_canceled_total",
    "compozy_temporal_workflow_timed_out_total",
    "compozy_temporal_workflow_continued_as_new_total",
];
pub const DURATION: &str = "compozy_temporal_workflow_duration_seconds";
pub const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The end metric a run the server closed this way counts, if any: a terminated run (by a
/// client, a reset or its parent's close policy) tells the worker nothing and has none.
pub fn end_metric(run: &GroundTruthRun) -> Option<&'static str> {
    Some(match (run.status, run.failure_is_timeout) {
        (RunStatus::Completed, _) => ENDS[0],
        (RunStatus::Failed, false) => ENDS[1],
        (RunStatus::Canceled, _) => ENDS[2],
        (RunStatus::Failed, true) | (RunStatus::TimedOut, _) => ENDS[3],
        (RunStatus::ContinuedAsNew, _) => ENDS[4],
        (RunStatus::Terminated, _) => return None,
        (RunStatus::Running, _) => panic!("run {} is still running on the server", run.run_id),
    })
}

/// The runs a worker ran (a run closed before its first task was never a worker's to see).
pub fn observable(truth: &GroundTruth) -> impl Iterator<Item = &GroundTruthRun> {
    truth.runs.iter().filter(|run| run.ran)
}

/// Runs a worker ran that the server terminated: counted started, never ended, and expired
/// from the observer's table once idle.
pub fn terminated(truth: &GroundTruth) -> usize {
    observable(truth)
        .filter(|run| end_metric(run).is_none())
        .count()
}

/// Runs a reset made: a later run of a workflow id whose earlier run the server terminated
/// (a reset terminates the run it resets).
pub fn made_by_a_reset(truth: &GroundTruth) -> std::collections::HashSet<&str> {
    truth
        .runs
        .iter()
        .filter(|run| {
            truth.runs.iter().any(|earlier| {
                earlier.workflow_id == run.workflow_id
                    && earlier.status == RunStatus::Terminated
                    && earlier.start_time_unix_nanos < run.start_time_unix_nanos
            })
        })
        .map(|run| run.run_id.as_str())
        .collect()
}

/// What the counters must read, from the server's record: metric -> workflow type -> count.
pub fn expected(truth: &GroundTruth) -> BTreeMap<&'static str, BTreeMap<String, i64>> {
    let mut counts: BTreeMap<&'static str, BTreeMap<String, i64>> = BTreeMap::new();
    for run in observable(truth) {
        for metric in std::iter::once(STARTED).chain(end_metric(run)) {
            *counts
                .entry(metric)
                .or_default()
                .entry(run.workflow_type.clone())
                .or_default() += 1;
        }
    }
    counts
}

pub fn total_ends(received: &Received) -> i64 {
    ENDS.iter()
        .flat_map(|m| received.workflow_types(m).into_iter().map(move |t| (m, t)))
        .map(|(m, t)| received.int(m, &t).unwrap_or(0))
        .sum()
}

#[derive(Debug)]
pub struct Outcome {
    pub truth: GroundTruth,
    pub received: Received,
    pub lines: Vec<Value>,
    pub worker_pid: u32,
    /// The `service.name` the observer gives the worker's metrics.
    pub service_name: String,
    /// The observer's log (stderr).
    pub log: String,
    /// What the observer was fed (`--record-to`), to replay without a kernel.
    pub recording: std::path::PathBuf,
}

/// `attach` arguments that export to `receiver` every half second.
pub fn export_to(receiver: &Receiver) -> Vec<String> {
    let args = [
        "--otlp-endpoint",
        &receiver.endpoint,
        "--otlp-protocol",
        receiver.transport.flag(),
    ];
    args.iter()
        .chain(&["--metric-export-interval-ms", "500"])
        .map(|a| a.to_string())
        .collect()
}

pub fn with(mut args: Vec<String>, more: &[&str]) -> Vec<String> {
    args.extend(more.iter().map(|a| a.to_string()));
    args
}

pub fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Runs `mix` against a worker started with `worker_args`, observed and exported through
/// `transport`, and returns the server's record, the final export, and what was printed.
pub fn observe(
    test: &str,
    transport: Transport,
    worker_args: &[&str],
    mix: &Mix,
) -> anyhow::Result<Outcome> {
    let env = Env::require(test)?;
    let worker = Worker::Rust(env.worker.clone());
    observe_worker(&env, &worker, transport, worker_args, mix)
}

/// Like [`observe`], with another build of the sample worker.
pub fn observe_binary(
    env: &Env,
    binary: &Path,
    transport: Transport,
    worker_args: &[&str],
    mix: &Mix,
) -> anyhow::Result<Outcome> {
    observe_worker(
        env,
        &Worker::Rust(binary.to_path_buf()),
        transport,
        worker_args,
        mix,
    )
}

/// Like [`observe`], with any sample worker (Rust or Python).
pub fn observe_worker(
    env: &Env,
    kind: &Worker,
    transport: Transport,
    worker_args: &[&str],
    mix: &Mix,
) -> anyhow::Result<Outcome> {
    observe_worker_until(
        env,
        kind,
        transport,
        worker_args,
        &[],
        mix,
        &every_run_ended,
    )
}

/// Whether the export counts an end for every run the server recorded: when
/// [`observe_worker`] stops waiting.
pub fn every_run_ended(received: &Received, truth: &GroundTruth) -> bool {
    let ends = observable(truth).filter(|run| end_metric(run).is_some());
    total_ends(received) == ends.count() as i64
}

/// Like [`observe_worker`], with more observer arguments, waiting (at most 30 s after the
/// server closed every run) until the export satisfies `settled` rather than for an end of
/// every run.
pub fn observe_worker_until(
    env: &Env,
    kind: &Worker,
    transport: Transport,
    worker_args: &[&str],
    observer_args: &[&str],
    mix: &Mix,
    settled: &dyn Fn(&Received, &GroundTruth) -> bool,
) -> anyhow::Result<Outcome> {
    let server = DevServer::start(env)?;
    let receiver = Receiver::start(transport)?;
    let task_queue = unique(&env.test);
    let worker = kind.start(env, &server, &task_queue, worker_args)?;
    let recording = env.logs.join(format!("{task_queue}.rec"));
    let args = with(
        export_to(&receiver),
        &[
            "--timeout-grace-ms",
            "1000",
            "--print-events",
            "--print-updates",
            "--format",
            "json",
            "--record-to",
            &recording.to_string_lossy(),
        ],
    );
    let args = with(args, observer_args);
    let observer = Observer::attach(env, worker.pid(), &as_strs(&args))?;
    let truth = drive(env, &server, &task_queue, &task_queue, mix)?;
    // Server-enforced timeouts are inferred a grace period after the deadline.
    receiver.wait_for(Duration::from_secs(30), "the expected export", |r| {
        settled(r, &truth)
    })?;
    let exports_before_stop = receiver.received().exports;
    let (status, stdout, log) = observer.stop()?;
    assert!(
        status.success(),
        "observer exited with {status}; log:\n{log}"
    );
    assert!(
        log.contains("lost=0 read_faults=0, undecodable=0,"),
        "{log}"
    );
    // The observer exports its last values as it exits.
    let received = receiver.wait_for(Duration::from_secs(10), "the final export", |r| {
        r.exports > exports_before_stop
    })?;
    Ok(Outcome {
        truth,
        received,
        lines: parse_events(&stdout)?,
        worker_pid: worker.pid(),
        service_name: kind.service_name()?,
        log,
        recording,
    })
}

/// Every counter equals the server's count per workflow type (no other type appears), every
/// run that started has ended or was terminated, and the histogram counts each ended run with
/// the contract's buckets.
pub fn assert_counts_match(received: &Received, truth: &GroundTruth) {
    let expected = expected(truth);
    for metric in std::iter::once(STARTED).chain(ENDS) {
        let mut types: Vec<String> = received.workflow_types(metric);
        types.extend(
            expected
                .get(metric)
                .map(|m| m.keys().cloned().collect::<Vec<_>>())
                .unwrap_or_default(),
        );
        types.sort();
        types.dedup();
        for ty in types {
            let want = expected
                .get(metric)
                .and_then(|m| m.get(&ty))
                .copied()
                .unwrap_or(0);
            assert_eq!(
                received.int(metric, &ty).unwrap_or(0),
                want,
                "{metric}{{workflow_type={ty}}}"
            );
        }
    }
    for (ty, started) in expected.get(STARTED).into_iter().flatten() {
        let ended: i64 = ENDS.iter().map(|m| received.int(m, ty).unwrap_or(0)).sum();
        let terminated = observable(truth)
            .filter(|run| run.workflow_type == *ty && end_metric(run).is_none())
            .count() as i64;
        assert_eq!(
            *started,
            ended + terminated,
            "{ty}: started = the sum of the end states + the terminated (no run left open)"
        );
        let (count, _, bounds) = received.histogram(DURATION, ty).unwrap_or_default();
        assert_eq!(count as i64, ended, "{ty}: one duration per ended run");
        assert_eq!(bounds, BUCKETS.to_vec(), "{ty}: the contract's buckets");
    }
}

/// Every counter equals the server's count per type, the histogram counts every ended run with
/// the contract's buckets, each run's duration is within 50 ms of the server's, and
/// started = completed + failed + canceled + timed_out + continued_as_new (no run is left open).
/// A run a reset made is timed from its first task after the reset (README, Metrics): its
/// duration is short of the server's by the time that task waited for a poller, never longer.
pub fn assert_matches_server(outcome: &Outcome) {
    let Outcome {
        truth,
        received,
        lines,
        ..
    } = outcome;
    assert_counts_match(received, truth);
    let durations: BTreeMap<&str, f64> = lines
        .iter()
        .filter(|l| l["update"] == "run_ended")
        .map(|l| {
            (
                l["run_id"].as_str().unwrap_or_default(),
                l["duration_seconds"].as_f64().unwrap_or(f64::NAN),
            )
        })
        .collect();
    let reset = made_by_a_reset(truth);
    for run in observable(truth).filter(|run| end_metric(run).is_some()) {
        let server = (run.close_time_unix_nanos - run.start_time_unix_nanos) as f64 / 1e9;
        let seen = durations.get(run.run_id.as_str()).copied();
        if reset.contains(run.run_id.as_str()) {
            assert!(
                seen.is_some_and(|d| d > 0.0 && d <= server + 0.050),
                "run {} ({}, made by a reset): duration {seen:?}, the server's {server:.4}s",
                run.run_id,
                run.workflow_type
            );
            continue;
        }
        assert!(
            seen.is_some_and(|d| (d - server).abs() <= 0.050),
            "run {} ({}): duration {seen:?} vs the server's {server:.4}s",
            run.run_id,
            run.workflow_type
        );
    }
    assert_eq!(
        received.int("compozy_temporal_workers_running_total", ""),
        Some(1)
    );
    assert_eq!(
        received.int("compozy_temporal_workers_configured_total", ""),
        Some(1)
    );
    assert_eq!(
        received.int("temporal_observer_events_lost_total", ""),
        Some(0)
    );
    assert_eq!(
        received.resource.get("service.name"),
        Some(&outcome.service_name)
    );
    assert_eq!(
        received.resource.get("process.pid"),
        Some(&outcome.worker_pid.to_string())
    );
}

/// What a late attach left: the export, and the observer's stdout (its updates, as JSON) and log.
#[derive(Debug)]
pub struct LateAttach {
    pub received: Received,
    pub stdout: String,
    pub log: String,
}

/// The late-attach scenario on `worker` (test `name`): five runs (3 signal, 2 cancel) start
/// and run their first task before the observer attaches, and end after it; two complete runs
/// start after it. Checks what every worker kind must show: the runs under way count their ends
/// under their workflow types, and no start; the later ones count both; seven ends in all.
/// `observer_args` are passed to the observer too.
pub fn observe_late_attach(
    env: &Env,
    worker: &Worker,
    name: &str,
    observer_args: &[&str],
) -> anyhow::Result<LateAttach> {
    let server = DevServer::start(env)?;
    let receiver = Receiver::start(Transport::Http)?;
    let task_queue = unique(name);
    let worker = worker.start(env, &server, &task_queue, &[])?;
    let before = Mix {
        signal: 3,
        cancel: 2,
        ..Mix::default()
    };
    let gate = env.logs.join(unique("gate"));
    let early = crate::Driver::spawn(
        env,
        &server,
        &task_queue,
        &unique("early"),
        &before,
        Some(gate),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    let args = with(
        export_to(&receiver),
        &["--print-updates", "--format", "json"],
    );
    let args = with(args, observer_args);
    let observer = Observer::attach(env, worker.pid(), &as_strs(&args))?;
    let early_truth = early.wait()?;
    let after = Mix {
        complete: 2,
        ..Mix::default()
    };
    let late_truth = drive(env, &server, &task_queue, &unique("after"), &after)?;
    receiver.wait_for(Duration::from_secs(30), "an end for every run", |r| {
        total_ends(r) == 7
    })?;
    let (status, stdout, log) = observer.stop()?;
    assert!(status.success(), "{log}");
    let received = receiver.received();
    for ty in ["SignalWorkflow", "CancelWorkflow"] {
        assert_eq!(received.int(STARTED, ty), None, "no phantom starts of {ty}");
    }
    assert_eq!(received.int(STARTED, "CompleteWorkflow"), Some(2));
    assert_eq!(
        received.int(ENDS[0], "SignalWorkflow"),
        Some(3),
        "ends of runs started before attaching"
    );
    assert_eq!(
        received.int(ENDS[2], "CancelWorkflow"),
        Some(2),
        "ends of runs started before attaching"
    );
    assert_eq!(received.int(ENDS[0], "CompleteWorkflow"), Some(2));
    assert!(
        received
            .workflow_types(ENDS[0])
            .iter()
            .all(|t| t != "unknown"),
        "every late run is named"
    );
    assert_eq!(early_truth.runs.len() + late_truth.runs.len(), 7);
    let ended = parse_events(&stdout)?
        .into_iter()
        .filter(|l| l["update"] == "run_ended")
        .count();
    assert_eq!(ended, 7, "{stdout}");
    Ok(LateAttach {
        received,
        stdout,
        log,
    })
}
