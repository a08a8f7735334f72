//! The end-to-end checks every SDK bridge passes (Python and TypeScript workers), against the
//! Temporal server's own record of the same runs. Each test file names its SDK ([`Sdk`]) and
//! calls these; what differs between the SDKs (finding the bridge file, a process without it, a
//! process that loads it late) stays in that file.

use std::{
    process::{Command, ExitStatus},
    time::Duration,
};

use e2e::{
    DevServer, Env, GroundTruth, Guard, Mix, Observer, Worker,
    accuracy::{
        ENDS, STARTED, as_strs, assert_counts_match, assert_matches_server, expected, export_to,
        observe_late_attach, observe_worker, observe_worker_until, total_ends, with,
    },
    drive,
    otlp::{Received, Receiver, Transport},
    unique,
};

use super::replay::assert_replay_equals_export;

/// One SDK whose bridge the observer probes.
pub struct Sdk {
    pub worker: Worker,
    /// Prefix of the tests' names and task queues, e.g. `python`.
    pub name: &'static str,
    /// `process.runtime.name` on the exported resource.
    pub runtime_name: &'static str,
    /// How many uprobes a plan for its bridge attaches.
    pub probes_attached: usize,
    /// The SDK asks each worker to shut down exactly once (else at least once).
    pub one_shutdown_call_per_worker: bool,
}

/// The session's last line says every message was read whole and decoded: none cut, none
/// missing a chunk, none that failed to decode (which would mark the open runs as affected).
fn assert_every_message_whole(log: &str) {
    assert!(
        log.contains("undecodable=0, truncated=0, incomplete=0"),
        "{log}"
    );
}

/// Drives the every-end-state workload on `task_queue` and waits until the export (of one
/// process, when given) has an end for every run.
pub fn drive_every_end_state(
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

/// Test `test` of this SDK: its environment, a dev server, an OTLP receiver and a task queue of
/// its own.
fn scenario(
    sdk: &Sdk,
    test: &str,
    transport: Transport,
) -> anyhow::Result<(Env, DevServer, Receiver, String)> {
    let env = Env::require(&format!("{}_{test}", sdk.name))?;
    let server = DevServer::start(&env)?;
    let receiver = Receiver::start(transport)?;
    let task_queue = unique(&format!("{}-{test}", sdk.name).replace('_', "-"));
    Ok((env, server, receiver, task_queue))
}

/// Observer arguments that print every event as JSON.
pub const PRINT_EVENTS: &[&str] = &["--print-events", "--format", "json"];

/// Runs the observer; its exit status, and its stdout followed by its stderr.
pub fn observer(env: &Env, args: &[&str]) -> anyhow::Result<(ExitStatus, String)> {
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

pub fn metrics_equal_the_servers_record(sdk: &Sdk) -> anyhow::Result<()> {
    let env = Env::require(&format!("{}_metrics", sdk.name))?;
    let outcome = observe_worker(
        &env,
        &sdk.worker,
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
        Some(sdk.runtime_name)
    );
    assert_every_message_whole(&outcome.log);
    Ok(())
}

pub fn evictions_from_a_cache_of_one_never_count_twice(sdk: &Sdk) -> anyhow::Result<()> {
    let env = Env::require(&format!("{}_evictions", sdk.name))?;
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
        ..Mix::default()
    };
    let outcome = observe_worker(
        &env,
        &sdk.worker,
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

/// Runs whose 1 MiB input makes their activations and completions 1 MiB large.
fn large_inputs() -> Mix {
    Mix {
        complete: 2,
        input_bytes: 1 << 20,
        ..Mix::default()
    }
}

pub fn messages_below_the_cap_are_read_whole_in_chunks(sdk: &Sdk) -> anyhow::Result<()> {
    let env = Env::require(&format!("{}_large_below_cap", sdk.name))?;
    let every_end = |r: &Received, truth: &GroundTruth| total_ends(r) == truth.runs.len() as i64;
    let outcome = observe_worker_until(
        &env,
        &sdk.worker,
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

pub fn messages_past_the_cap_are_counted_truncated_never_misread(sdk: &Sdk) -> anyhow::Result<()> {
    let env = Env::require(&format!("{}_large_past_cap", sdk.name))?;
    let truncated = |r: &Received| r.int("temporal_observer_records_truncated_total", "");
    let outcome = observe_worker_until(
        &env,
        &sdk.worker,
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

/// `watch` attaches to a process of the SDK's runtime within a second of it mapping the bridge.
/// `late_worker` starts one that execs, waits two seconds, and then runs the sample worker on
/// the task queue it is given (so it loads the bridge long after `watch` looked at it).
pub fn watch_attaches_within_a_second_of_the_bridge_loading(
    sdk: &Sdk,
    exe_glob: &str,
    late_worker: impl Fn(&Env, &DevServer, &str) -> anyhow::Result<Guard>,
) -> anyhow::Result<()> {
    let env = Env::require(&format!("{}_watch", sdk.name))?;
    let server = DevServer::start(&env)?;
    let receiver = Receiver::start(Transport::Grpc)?;
    let mut observer = Observer::watch(
        &env,
        &[],
        &as_strs(&with(export_to(&receiver), &["--exe-glob", exe_glob])),
    )?;
    let task_queue = unique(&format!("{}-watch", sdk.name));
    let mut worker = late_worker(&env, &server, &task_queue)?;
    let pid = worker.pid();
    worker.wait_for_log("polling task queue", Duration::from_secs(120))?;
    let attached = format!("attached {} probes to PID {pid} (", sdk.probes_attached);
    observer
        .process
        .wait_for_log(&attached, Duration::from_secs(10))?;
    let truth = drive_every_end_state(&env, &server, &receiver, &task_queue, Some(pid))?;
    let (status, _stdout, log) = observer.stop()?;
    assert!(status.success(), "watch exited with {status}; log:\n{log}");
    let received = receiver.received();
    assert_counts_match(&received.processes[&pid.to_string()], &truth);
    assert_eq!(
        received.processes[&pid.to_string()]
            .resource
            .get("process.runtime.name")
            .map(String::as_str),
        Some(sdk.runtime_name)
    );
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

pub fn workers_created_and_shut_down_while_observed_count_exactly(sdk: &Sdk) -> anyhow::Result<()> {
    let (env, server, receiver, task_queue) = scenario(sdk, "workers", Transport::Grpc)?;
    // The main worker runs throughout; a second one is created and shut down three times,
    // after the observer attached.
    let mut worker = sdk.worker.start(
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
    worker.wait_for_log("extra worker cycles done", Duration::from_secs(90))?;
    let truth = drive_every_end_state(&env, &server, &receiver, &task_queue, None)?;
    let (status, stdout, log) = observer.stop()?;
    assert!(status.success(), "{log}");
    let events = e2e::parse_events(&stdout)?;
    let count = |probe: &str| events.iter().filter(|e| e["probe"] == probe).count();
    assert_eq!(count("worker_start"), 3, "one creation per extra worker");
    if sdk.one_shutdown_call_per_worker {
        assert_eq!(
            count("worker_shutdown"),
            3,
            "each extra worker asked to stop once"
        );
    } else {
        assert!(
            count("worker_shutdown") >= 3,
            "each extra worker asked to stop"
        );
    }
    assert_every_message_whole(&log);
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

pub fn queries_on_closed_runs_never_count_again(sdk: &Sdk) -> anyhow::Result<()> {
    let (env, server, receiver, task_queue) = scenario(sdk, "closed_queries", Transport::Http)?;
    let worker = sdk.worker.start(&env, &server, &task_queue, &[])?;
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

pub fn a_ring_buffer_too_small_for_one_message_is_refused(sdk: &Sdk) -> anyhow::Result<()> {
    let env = Env::require(&format!("{}_small_ring", sdk.name))?;
    let server = DevServer::start(&env)?;
    let task_queue = unique(&format!("{}-small-ring", sdk.name));
    let worker = sdk.worker.start(&env, &server, &task_queue, &[])?;
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

/// `inspect` on a bridge file: versions from its package, the message family, each probe at
/// its point, and the verdict; the JSON report has the six probes in order.
pub fn inspect_reads_the_bridge(
    env: &Env,
    library: &std::path::Path,
    package: (&str, &str),
    needles: &[&str],
) -> anyhow::Result<()> {
    let (name, version) = package;
    let (status, stdout) = observer(env, &["inspect", &library.to_string_lossy()])?;
    assert!(status.success(), "{stdout}");
    let header = format!("package:   {name} {version} (from ");
    for needle in [
        header.as_str(),
        "layout:    none needed",
        "verdict:   can be observed",
    ]
    .iter()
    .chain(needles)
    {
        assert!(stdout.contains(needle), "missing {needle:?} in:\n{stdout}");
    }
    let output = Command::new(&env.observer)
        .args(["inspect", "--output", "json"])
        .arg(library)
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
            "worker_shutdown",
            "task",
            "task"
        ]
    );
    assert_eq!(report["package"]["name"], name);
    assert_eq!(report["package"]["version"], version);
    assert!(
        report["sdk_core"]
            .as_str()
            .is_some_and(|v| v.starts_with("0.")),
        "{report}"
    );
    Ok(())
}

/// A process of the SDK's runtime that has not loaded the bridge (started by `idle`, which
/// prints `idle` when it runs): `attach` and `inspect` refuse it with the reason.
pub fn a_process_without_the_bridge_is_refused(
    env: &Env,
    idle: Command,
    refusal: &str,
) -> anyhow::Result<()> {
    a_process_without_the_bridge_is_refused_when(env, idle, refusal, |_| Ok(()))
}

/// Like [`a_process_without_the_bridge_is_refused`], after `check` on the idle process's PID.
pub fn a_process_without_the_bridge_is_refused_when(
    env: &Env,
    mut idle: Command,
    refusal: &str,
    check: impl Fn(u32) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let log = env.logs.join(format!("idle-{}.log", unique("runtime")));
    let file = std::fs::File::create(&log)?;
    idle.stdout(file.try_clone()?).stderr(file);
    let mut idle = Guard::spawn("runtime without the bridge", idle, log)?;
    idle.wait_for_log("idle", Duration::from_secs(30))?;
    check(idle.pid())?;
    let pid = idle.pid().to_string();
    for args in [
        vec!["attach", "--pid", &pid, "--no-export"],
        vec!["inspect", "--pid", &pid],
    ] {
        let (status, output) = observer(env, &args)?;
        assert!(!status.success(), "{args:?} succeeded:\n{output}");
        assert!(output.contains(refusal), "{args:?}:\n{output}");
    }
    Ok(())
}

/// A copy of the bridge at `relative` (under a scratch directory, where its runtime's package
/// layout puts it) without the symbol of its required activation point is refused by
/// `inspect`, naming the missing function.
pub fn a_bridge_without_a_required_point_is_refused(
    env: &Env,
    library: &std::path::Path,
    relative: &str,
) -> anyhow::Result<()> {
    let output = Command::new(&env.observer)
        .args(["inspect", "--output", "json"])
        .arg(library)
        .output()?;
    assert!(output.status.success(), "{output:?}");
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let symbol = report["probes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "activation")
        .and_then(|p| p["locations"][0]["symbol"].as_str())
        .ok_or_else(|| anyhow::anyhow!("no activation location in {report}"))?
        .to_string();
    let copy = env.logs.join(unique("no-points")).join(relative);
    std::fs::create_dir_all(copy.parent().unwrap_or(&env.logs))?;
    let stripped = Command::new("objcopy")
        .arg(format!("--strip-symbol={symbol}"))
        .arg(library)
        .arg(&copy)
        .status()?;
    anyhow::ensure!(
        stripped.success(),
        "objcopy --strip-symbol failed: {stripped}"
    );
    let (status, text) = observer(env, &["inspect", &copy.to_string_lossy()])?;
    assert!(!status.success(), "{text}");
    for needle in [
        "lacks functions the observer needs",
        "WorkflowActivation as prost::message::Message>::encode_to_vec",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in:\n{text}");
    }
    Ok(())
}

/// Runs under way when the observer attaches count their ends, under their workflow type (from
/// the task probe: their activations never name it), and no start; runs started after it count
/// both. And every task record decoded: no run was marked affected.
pub fn runs_under_way_before_attaching_count_their_ends_but_no_start(
    sdk: &Sdk,
) -> anyhow::Result<()> {
    let env = Env::require(&format!("{}_late_attach", sdk.name))?;
    let late = observe_late_attach(&env, &sdk.worker, &format!("{}-late", sdk.name), &[])?;
    assert_eq!(
        late.received
            .int("temporal_observer_runs_affected_by_loss_total", "")
            .unwrap_or(0),
        0,
        "every task record decoded"
    );
    assert_every_message_whole(&late.log);
    Ok(())
}
