//! Python workers: sdk-core inside the Python SDK's bridge (PyPI `temporalio`, pinned in
//! tests/fixtures/python-worker), observed through the protobuf messages it hands over, against
//! the Temporal server's own record of the same runs.

#[path = "support/replay.rs"]
mod replay;

use replay::assert_replay_equals_export;
use std::{process::Command, time::Duration};

use e2e::{
    DevServer, Env, GroundTruth, Guard, Mix, Observer, Worker,
    accuracy::{
        ENDS, STARTED, as_strs, assert_counts_match, assert_matches_server, expected, export_to,
        observe_worker, observe_worker_until, total_ends, with,
    },
    drive,
    otlp::{Received, Receiver, Transport},
    python_worker, unique,
};

/// The session's last line says every message was read whole: none cut, none missing a chunk.
fn assert_every_message_whole(log: &str) {
    assert!(log.contains("truncated=0, incomplete=0"), "{log}");
}

/// Drives the every-end-state workload on `task_queue` and waits until the export (of one
/// process, when given) has an end for every run.
fn drive_every_end_state(
    env: &Env,
    server: &DevServer,
    receiver: &Receiver,
    task_queue: &str,
    process: Option<u32>,
) -> anyhow::Result<GroundTruth> {
    let truth = drive(env, server, task_queue, task_queue, &Mix::every_end_state())?;
    let runs = truth.runs.len() as i64;
    receiver.wait_for(Duration::from_secs(30), "an end for every run", |r| {
        let part = match process {
            Some(pid) => r.processes.get(&pid.to_string()),
            None => Some(r),
        };
        part.is_some_and(|p| total_ends(p) == runs)
    })?;
    Ok(truth)
}

/// Observer arguments that print every event as JSON.
const PRINT_EVENTS: &[&str] = &["--print-events", "--format", "json"];

/// Runs the observer; its exit status, and its stdout followed by its stderr.
fn observer(env: &Env, args: &[&str]) -> anyhow::Result<(std::process::ExitStatus, String)> {
    let output = Command::new(&env.observer).args(args).output()?;
    Ok((
        output.status,
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    ))
}

#[test]
fn python_metrics_equal_the_servers_record() -> anyhow::Result<()> {
    let env = Env::require("python_metrics")?;
    let outcome = observe_worker(
        &env,
        &Worker::Python,
        Transport::Grpc,
        &[],
        &Mix::every_end_state(),
    )?;
    assert_matches_server(&outcome);
    assert_replay_equals_export(&outcome)?;
    assert_eq!(
        outcome
            .received
            .resource
            .get("process.runtime.name")
            .map(String::as_str),
        Some("cpython")
    );
    assert_every_message_whole(&outcome.log);
    Ok(())
}

#[test]
fn python_evictions_from_a_cache_of_one_never_count_twice() -> anyhow::Result<()> {
    let env = Env::require("python_evictions")?;
    let mix = Mix {
        complete: 6,
        fail: 2,
        cancel: 2,
        activity_timeout: 1,
        server_timeout: 0,
        continue_as_new: 2,
        continue_as_new_times: 2,
        signal: 3,
        server_timeout_ms: 2000,
        input_bytes: 0,
    };
    let outcome = observe_worker(
        &env,
        &Worker::Python,
        Transport::Http,
        &["--max-cached-workflows", "1"],
        &mix,
    )?;
    let cache_full = outcome
        .lines
        .iter()
        .filter(|l| l["probe"] == "eviction" && l["reason_name"] == "CacheFull")
        .count();
    let replays = outcome
        .lines
        .iter()
        .filter(|l| l["probe"] == "activation" && l["replaying"] == true)
        .count();
    assert!(
        cache_full > 0 && replays > 0,
        "the cache of one evicted {cache_full} runs for room and {replays} activations replayed"
    );
    assert_matches_server(&outcome);
    Ok(())
}

#[test]
fn inspect_reads_the_bridge_with_its_package_versions() -> anyhow::Result<()> {
    let env = Env::require("python_inspect")?;
    let (python, _) = python_worker()?;
    let output = Command::new(&python)
        .args([
            "-c",
            "import temporalio.bridge, os; print(os.path.dirname(temporalio.bridge.__file__))",
        ])
        .output()?;
    anyhow::ensure!(output.status.success(), "{output:?}");
    let dir = std::path::PathBuf::from(String::from_utf8(output.stdout)?.trim());
    let library = std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("temporal_sdk_bridge"))
        })
        .ok_or_else(|| anyhow::anyhow!("no temporal_sdk_bridge*.so in {}", dir.display()))?;
    let pinned = std::fs::read_to_string(
        python
            .ancestors()
            .nth(3)
            .map(|d| d.join("requirements.txt"))
            .unwrap_or_default(),
    )?;
    let version = pinned
        .lines()
        .find_map(|l| l.strip_prefix("temporalio=="))
        .ok_or_else(|| anyhow::anyhow!("requirements.txt pins no temporalio"))?
        .trim()
        .to_string();
    let (status, stdout) = observer(&env, &["inspect", &library.to_string_lossy()])?;
    assert!(status.success(), "{stdout}");
    for needle in [
        format!("package:   temporalio {version} (from "),
        "reads:     protobuf messages at the Python bridge".to_string(),
        "layout:    none needed".to_string(),
        "__pymethod_complete_workflow_activation__".to_string(),
        "WorkflowActivation as prost::message::Message>::encode_to_vec".to_string(),
        "verdict:   can be observed".to_string(),
    ] {
        assert!(stdout.contains(&needle), "missing {needle:?} in:\n{stdout}");
    }
    let output = Command::new(&env.observer)
        .args(["inspect", "--output", "json"])
        .arg(&library)
        .output()?;
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let names: Vec<&str> = report["probes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "activation",
            "completion",
            "worker_start",
            "worker_shutdown"
        ]
    );
    assert_eq!(report["package"]["version"], version.as_str());
    assert!(
        report["sdk_core"]
            .as_str()
            .is_some_and(|v| v.starts_with("0."))
    );
    Ok(())
}

#[test]
fn a_python_process_without_the_bridge_is_refused_clearly() -> anyhow::Result<()> {
    let env = Env::require("python_no_bridge")?;
    let (python, _) = python_worker()?;
    let log = env.logs.join("idle-python.log");
    let file = std::fs::File::create(&log)?;
    let mut command = Command::new(&python);
    command
        .args([
            "-c",
            "import sys, time; print('idle', file=sys.stderr, flush=True); time.sleep(120)",
        ])
        .stdout(file.try_clone()?)
        .stderr(file);
    let mut idle = Guard::spawn("python without temporalio", command, log)?;
    idle.wait_for_log("idle", Duration::from_secs(20))?;
    let pid = idle.pid().to_string();
    for args in [
        vec!["attach", "--pid", &pid, "--no-export"],
        vec!["inspect", "--pid", &pid],
    ] {
        let (status, output) = observer(&env, &args)?;
        assert!(!status.success(), "{args:?} succeeded:\n{output}");
        assert!(
            output.contains("has not loaded the Temporal SDK bridge"),
            "{args:?}:\n{output}"
        );
    }
    Ok(())
}

/// Runs whose 1 MiB input makes their activations and completions 1 MiB large.
fn large_inputs() -> Mix {
    Mix {
        complete: 2,
        input_bytes: 1 << 20,
        ..Mix::default()
    }
}

#[test]
fn python_messages_below_the_cap_are_read_whole_in_chunks() -> anyhow::Result<()> {
    let env = Env::require("python_large_below_cap")?;
    let every_end = |r: &Received, truth: &GroundTruth| total_ends(r) == truth.runs.len() as i64;
    let outcome = observe_worker_until(
        &env,
        &Worker::Python,
        Transport::Grpc,
        &[],
        &[
            "--max-message-bytes",
            "4194304",
            "--ring-buffer-bytes",
            "16777216",
        ],
        &large_inputs(),
        &every_end,
    )?;
    assert_matches_server(&outcome);
    assert_every_message_whole(&outcome.log);
    Ok(())
}

#[test]
fn python_messages_past_the_cap_are_counted_truncated_never_misread() -> anyhow::Result<()> {
    let env = Env::require("python_large_past_cap")?;
    let truncated = |r: &Received| r.int("temporal_observer_records_truncated_total", "");
    let outcome = observe_worker_until(
        &env,
        &Worker::Python,
        Transport::Grpc,
        &[],
        &["--ring-buffer-bytes", "16777216"],
        &large_inputs(),
        // Each run's first activation, its activity, its result and its completion are cut.
        &|r, truth| truncated(r) >= Some(4 * truth.runs.len() as i64),
    )?;
    let received = &outcome.received;
    assert!(
        received.int("temporal_observer_runs_affected_by_loss_total", "") > Some(0),
        "the runs open when a message was cut count as affected"
    );
    assert_eq!(
        received.int("temporal_observer_messages_incomplete_total", ""),
        Some(0)
    );
    // Nothing was read from a cut message: no count exceeds the server's, and no run counts
    // under another type.
    let expected = expected(&outcome.truth);
    for metric in std::iter::once(STARTED).chain(ENDS) {
        for ty in received.workflow_types(metric) {
            let want = expected
                .get(metric)
                .and_then(|m| m.get(&ty))
                .copied()
                .unwrap_or(0);
            let got = received.int(metric, &ty).unwrap_or(0);
            assert!(
                got <= want,
                "{metric}{{workflow_type={ty}}}: {got} > the server's {want}"
            );
        }
    }
    Ok(())
}

#[test]
fn watch_attaches_to_a_python_worker_within_a_second_of_it_loading_the_bridge() -> anyhow::Result<()>
{
    let env = Env::require("python_watch")?;
    let server = DevServer::start(&env)?;
    let receiver = Receiver::start(Transport::Grpc)?;
    let mut observer = Observer::watch(
        &env,
        &[],
        &as_strs(&with(export_to(&receiver), &["--exe-glob", "python*"])),
    )?;
    // A Python process that imports the SDK (and so loads the bridge) two seconds after its
    // exec, long after `watch` looked at it.
    let (python, script) = python_worker()?;
    let task_queue = unique("python-watch");
    let log = env.logs.join("late-import-python.log");
    let file = std::fs::File::create(&log)?;
    let late = format!(
        "import runpy, sys, time\ntime.sleep(2)\nsys.argv = [{script:?}, '--address', {url:?}, \
         '--task-queue', {task_queue:?}]\nrunpy.run_path({script:?}, run_name='__main__')",
        script = script.to_string_lossy(),
        url = server.url(),
    );
    let mut command = Command::new(&python);
    command
        .args(["-c", &late])
        .stdout(file.try_clone()?)
        .stderr(file);
    let mut worker = Guard::spawn("python that imports the SDK late", command, log)?;
    let pid = worker.pid();
    worker.wait_for_log("polling task queue", Duration::from_secs(60))?;
    let attached = format!("attached 5 probes to PID {pid} (");
    observer
        .process
        .wait_for_log(&attached, Duration::from_secs(10))?;
    let truth = drive_every_end_state(&env, &server, &receiver, &task_queue, Some(pid))?;
    let (status, _stdout, log) = observer.stop()?;
    assert!(status.success(), "watch exited with {status}; log:\n{log}");
    let received = receiver.received();
    assert_counts_match(&received.processes[&pid.to_string()], &truth);
    let latency: f64 = log
        .lines()
        .find(|l| l.contains(&attached))
        .and_then(|l| l.split(" ms after it loaded the SDK bridge").next())
        .and_then(|l| l.rsplit('(').next())
        .and_then(|ms| ms.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no attach latency after the bridge loaded in:\n{log}"))?;
    assert!(
        latency < 1000.0,
        "attached {latency} ms after the bridge was loaded"
    );
    Ok(())
}

#[test]
fn python_workers_created_and_shut_down_while_observed_count_exactly() -> anyhow::Result<()> {
    let env = Env::require("python_workers")?;
    let server = DevServer::start(&env)?;
    let receiver = Receiver::start(Transport::Grpc)?;
    let task_queue = unique("python-workers");
    // The main worker runs throughout; a second one is created and shut down three times,
    // after the observer attached.
    let mut worker = Worker::Python.start(
        &env,
        &server,
        &task_queue,
        &["--extra-worker-cycles", "3", "--extra-worker-delay", "3"],
    )?;
    let observer = Observer::attach(
        &env,
        worker.pid(),
        &as_strs(&with(export_to(&receiver), PRINT_EVENTS)),
    )?;
    worker.wait_for_log("extra worker cycles done", Duration::from_secs(60))?;
    let truth = drive_every_end_state(&env, &server, &receiver, &task_queue, None)?;
    let (status, stdout, log) = observer.stop()?;
    assert!(status.success(), "{log}");
    let events = e2e::parse_events(&stdout)?;
    let count = |probe: &str| events.iter().filter(|e| e["probe"] == probe).count();
    assert_eq!(count("worker_start"), 3, "one creation per extra worker");
    assert!(
        count("worker_shutdown") >= 3,
        "each extra worker asked to stop"
    );
    let received = receiver.received();
    assert_counts_match(&received, &truth);
    assert_eq!(
        received.int("compozy_temporal_workers_running_total", ""),
        Some(1),
        "the main worker runs; the three extra ones stopped"
    );
    assert_eq!(
        received.int("compozy_temporal_workers_configured_total", ""),
        Some(4),
        "four distinct workers seen"
    );
    Ok(())
}

#[test]
fn python_queries_on_closed_runs_never_count_again() -> anyhow::Result<()> {
    let env = Env::require("python_closed_queries")?;
    let server = DevServer::start(&env)?;
    let receiver = Receiver::start(Transport::Http)?;
    let task_queue = unique("python-queries");
    let worker = Worker::Python.start(&env, &server, &task_queue, &[])?;
    let observer = Observer::attach(
        &env,
        worker.pid(),
        &as_strs(&with(export_to(&receiver), PRINT_EVENTS)),
    )?;
    let truth = drive_every_end_state(&env, &server, &receiver, &task_queue, None)?;
    // Every run is closed and out of the cache: a query replays the run from its history.
    for i in 0..2 {
        let output = Command::new(&env.temporal)
            .args(["workflow", "query", "--address", &server.address])
            .args(["--workflow-id", &format!("{task_queue}-signal-{i}")])
            .args(["--type", "finished"])
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && text.contains("true"),
            "query {i}: {output:?}"
        );
    }
    let exports = receiver.received().exports;
    receiver.wait_for(Duration::from_secs(10), "two more exports", |r| {
        r.exports >= exports + 2
    })?;
    let (status, stdout, log) = observer.stop()?;
    assert!(status.success(), "{log}");
    let events = e2e::parse_events(&stdout)?;
    let queries = events
        .iter()
        .filter(|e| {
            e["probe"] == "activation"
                && e["jobs"]
                    .as_array()
                    .is_some_and(|jobs| jobs.iter().any(|j| j == "QueryWorkflow"))
        })
        .count();
    let replays = events
        .iter()
        .filter(|e| e["probe"] == "activation" && e["replaying"] == true)
        .count();
    assert!(
        queries >= 2 && replays >= 2,
        "each query reached its closed run, replayed from history ({queries} query \
         activations, {replays} replaying)"
    );
    assert_counts_match(&receiver.received(), &truth);
    Ok(())
}

#[test]
fn a_ring_buffer_too_small_for_one_message_is_refused() -> anyhow::Result<()> {
    let env = Env::require("python_small_ring")?;
    let server = DevServer::start(&env)?;
    let worker = Worker::Python.start(&env, &server, &unique("python-small-ring"), &[])?;
    let pid = worker.pid().to_string();
    let (status, output) = observer(
        &env,
        &[
            "attach",
            "--pid",
            &pid,
            "--no-export",
            "--ring-buffer-bytes",
            "65536",
        ],
    )?;
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("--max-message-bytes 65536 needs a ring buffer of at least twice that"),
        "{output}"
    );
    Ok(())
}
