//! Python workers: sdk-core inside the Python SDK's bridge (PyPI `temporalio`, pinned in
//! tests/fixtures/python-worker), observed through the protobuf messages it hands over, against
//! the Temporal server's own record of the same runs.

#[path = "support/bridges.rs"]
mod bridges;
#[path = "support/features.rs"]
mod features;
#[path = "support/replay.rs"]
mod replay;

use std::process::Command;

use bridges::Sdk;
use e2e::{DevServer, Env, Guard, Worker, python_worker};

const PYTHON: Sdk = Sdk {
    worker: Worker::Python,
    name: "python",
    runtime_name: "cpython",
    probes_attached: 7,
    // sdk-core's Python worker may ask again on the way out.
    one_shutdown_call_per_worker: false,
};

#[test]
fn python_every_sdk_feature_counts_what_the_server_records() -> anyhow::Result<()> {
    features::every_sdk_feature_counts_what_the_server_records("python_features", |_| {
        Worker::Python
    })
}

#[test]
fn python_without_a_cache_every_task_replays_and_counts_stay_exact() -> anyhow::Result<()> {
    features::without_a_cache_every_task_replays_and_counts_stay_exact("python_no_cache", |_| {
        Worker::Python
    })
}

#[test]
fn python_metrics_equal_the_servers_record() -> anyhow::Result<()> {
    bridges::metrics_equal_the_servers_record(&PYTHON)
}

#[test]
fn python_runs_under_way_before_attaching_count_their_ends_but_no_start() -> anyhow::Result<()> {
    bridges::runs_under_way_before_attaching_count_their_ends_but_no_start(&PYTHON)
}

#[test]
fn python_evictions_from_a_cache_of_one_never_count_twice() -> anyhow::Result<()> {
    bridges::evictions_from_a_cache_of_one_never_count_twice(&PYTHON)
}

#[test]
fn python_messages_below_the_cap_are_read_whole_in_chunks() -> anyhow::Result<()> {
    bridges::messages_below_the_cap_are_read_whole_in_chunks(&PYTHON)
}

#[test]
fn python_messages_past_the_cap_are_counted_truncated_never_misread() -> anyhow::Result<()> {
    bridges::messages_past_the_cap_are_counted_truncated_never_misread(&PYTHON)
}

#[test]
fn python_workers_created_and_shut_down_while_observed_count_exactly() -> anyhow::Result<()> {
    bridges::workers_created_and_shut_down_while_observed_count_exactly(&PYTHON)
}

#[test]
fn python_queries_on_closed_runs_never_count_again() -> anyhow::Result<()> {
    bridges::queries_on_closed_runs_never_count_again(&PYTHON)
}

#[test]
fn a_ring_buffer_too_small_for_one_message_is_refused() -> anyhow::Result<()> {
    bridges::a_ring_buffer_too_small_for_one_message_is_refused(&PYTHON)
}

#[test]
fn inspect_reads_the_bridge_with_its_package_versions() -> anyhow::Result<()> {
    let env = Env::require("python_inspect")?;
    let (python, _) = python_worker()?;
    let library = e2e::python_bridge()?;
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
    bridges::inspect_reads_the_bridge(
        &env,
        &library,
        ("temporalio", &version),
        &[
            "reads:     protobuf messages at the Python bridge",
            "__pymethod_complete_workflow_activation__",
            "WorkflowActivation as prost::message::Message>::encode_to_vec",
        ],
    )
}

#[test]
fn a_python_bridge_without_a_required_point_is_refused() -> anyhow::Result<()> {
    let env = Env::require("python_no_points")?;
    bridges::a_bridge_without_a_required_point_is_refused(
        &env,
        &e2e::python_bridge()?,
        "temporalio/bridge/temporal_sdk_bridge.abi3.so",
    )
}

#[test]
fn a_python_process_without_the_bridge_is_refused_clearly() -> anyhow::Result<()> {
    let env = Env::require("python_no_bridge")?;
    let (python, _) = python_worker()?;
    let mut idle = Command::new(&python);
    idle.args([
        "-c",
        "import sys, time; print('idle', file=sys.stderr, flush=True); time.sleep(120)",
    ]);
    bridges::a_process_without_the_bridge_is_refused(
        &env,
        idle,
        "has not loaded the Temporal SDK bridge (temporalio's temporal_sdk_bridge*.so",
    )
}

/// A Python process that imports the SDK (and so loads the bridge) two seconds after its exec.
fn python_importing_late(env: &Env, server: &DevServer, task_queue: &str) -> anyhow::Result<Guard> {
    let (python, script) = python_worker()?;
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
    Guard::spawn("python that imports the SDK late", command, log)
}

#[test]
fn watch_attaches_to_a_python_worker_within_a_second_of_it_loading_the_bridge() -> anyhow::Result<()>
{
    bridges::watch_attaches_within_a_second_of_the_bridge_loading(
        &PYTHON,
        "python*",
        python_importing_late,
    )
}
