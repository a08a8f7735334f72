//! TypeScript workers: sdk-core inside the TypeScript SDK's bridge (npm `@temporalio/worker`,
//! pinned in tests/fixtures/typescript-worker), observed through the protobuf messages it hands
//! over (completions through Node-API's `napi_get_buffer_info`, gated on the bridge's own
//! callback), against the Temporal server's own record of the same runs.

#[path = "support/bridges.rs"]
mod bridges;
#[path = "support/features.rs"]
mod features;
#[path = "support/replay.rs"]
mod replay;

use std::process::Command;

use bridges::Sdk;
use e2e::{DevServer, Env, Guard, Worker, typescript_bridge, typescript_worker};

const TYPESCRIPT: Sdk = Sdk {
    worker: Worker::TypeScript,
    name: "typescript",
    runtime_name: "nodejs",
    // activation (2), completion (a gate of 2, napi_get_buffer_info's 2), start, shutdown, and
    // the two task decoders.
    probes_attached: 10,
    one_shutdown_call_per_worker: true,
};

#[test]
fn typescript_every_sdk_feature_counts_what_the_server_records() -> anyhow::Result<()> {
    features::every_sdk_feature_counts_what_the_server_records("typescript_features", |_| {
        Worker::TypeScript
    })
}

#[test]
fn typescript_without_a_cache_every_task_replays_and_counts_stay_exact() -> anyhow::Result<()> {
    features::without_a_cache_every_task_replays_and_counts_stay_exact(
        "typescript_no_cache",
        |_| Worker::TypeScript,
    )
}

#[test]
fn typescript_metrics_equal_the_servers_record() -> anyhow::Result<()> {
    bridges::metrics_equal_the_servers_record(&TYPESCRIPT)
}

#[test]
fn typescript_runs_under_way_before_attaching_count_their_ends_but_no_start() -> anyhow::Result<()>
{
    bridges::runs_under_way_before_attaching_count_their_ends_but_no_start(&TYPESCRIPT)
}

#[test]
fn typescript_evictions_from_a_cache_of_one_never_count_twice() -> anyhow::Result<()> {
    bridges::evictions_from_a_cache_of_one_never_count_twice(&TYPESCRIPT)
}

#[test]
fn typescript_messages_below_the_cap_are_read_whole_in_chunks() -> anyhow::Result<()> {
    bridges::messages_below_the_cap_are_read_whole_in_chunks(&TYPESCRIPT)
}

#[test]
fn typescript_messages_past_the_cap_are_counted_truncated_never_misread() -> anyhow::Result<()> {
    bridges::messages_past_the_cap_are_counted_truncated_never_misread(&TYPESCRIPT)
}

#[test]
fn typescript_workers_created_and_shut_down_while_observed_count_exactly() -> anyhow::Result<()> {
    bridges::workers_created_and_shut_down_while_observed_count_exactly(&TYPESCRIPT)
}

#[test]
fn typescript_queries_on_closed_runs_never_count_again() -> anyhow::Result<()> {
    bridges::queries_on_closed_runs_never_count_again(&TYPESCRIPT)
}

#[test]
fn typescript_ring_buffer_too_small_for_one_message_is_refused() -> anyhow::Result<()> {
    bridges::a_ring_buffer_too_small_for_one_message_is_refused(&TYPESCRIPT)
}

#[test]
fn inspect_reads_the_typescript_bridge_with_its_package_versions() -> anyhow::Result<()> {
    let env = Env::require("typescript_inspect")?;
    let library = typescript_bridge()?;
    let (_, script) = typescript_worker()?;
    let manifest: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        script.with_file_name("package.json"),
    )?)?;
    let pinned = manifest["dependencies"]["@temporalio/worker"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("package.json pins no @temporalio/worker"))?;
    bridges::inspect_reads_the_bridge(
        &env,
        &library,
        ("@temporalio/core-bridge", pinned),
        &[
            "reads:     protobuf messages at the TypeScript bridge",
            "neon::sys::fun::call_boxed (its C-ABI instance for \
             temporal_sdk_typescript_bridge::worker::worker_complete_workflow_activation)",
            "inside the gate: napi_get_buffer_info in the process's runtime",
            "WorkflowActivation as prost::message::Message>::encode_to_vec",
        ],
    )
}

#[test]
fn inspect_of_a_typescript_worker_pid_finds_napi_in_node() -> anyhow::Result<()> {
    let env = Env::require("typescript_inspect_pid")?;
    let server = DevServer::start(&env)?;
    let worker = TYPESCRIPT
        .worker
        .start(&env, &server, &e2e::unique("ts-inspect"), &[])?;
    let pid = worker.pid().to_string();
    let (status, output) = bridges::observer(&env, &["inspect", "--pid", &pid])?;
    assert!(status.success(), "{output}");
    for needle in [
        format!("binary:    PID {pid} ("),
        ": index.node)".to_string(),
        format!("inside the gate: napi_get_buffer_info in /proc/{pid}/"),
        "verdict:   can be observed".to_string(),
    ] {
        assert!(output.contains(&needle), "missing {needle:?} in:\n{output}");
    }
    // The file named is node's executable (`/proc/PID/exe`) or the libnode it maps (Debian's
    // nodejs), and it exports the function, as `nm -D` reads it independently.
    let file = output
        .split("inside the gate: napi_get_buffer_info in ")
        .nth(1)
        .and_then(|rest| rest.split(" at file offset").next())
        .ok_or_else(|| anyhow::anyhow!("no napi location in:\n{output}"))?;
    let nm = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(file)
        .output()?;
    anyhow::ensure!(nm.status.success(), "nm -D {file}: {nm:?}");
    let exported = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .any(|l| l.ends_with(" napi_get_buffer_info"));
    assert!(exported, "{file} exports napi_get_buffer_info");
    Ok(())
}

#[test]
fn a_typescript_bridge_without_a_required_point_is_refused() -> anyhow::Result<()> {
    let env = Env::require("typescript_no_points")?;
    bridges::a_bridge_without_a_required_point_is_refused(
        &env,
        &typescript_bridge()?,
        "node_modules/@temporalio/core-bridge/releases/x86_64-unknown-linux-gnu/index.node",
    )
}

#[test]
fn a_node_process_without_the_bridge_is_refused_clearly() -> anyhow::Result<()> {
    let env = Env::require("typescript_no_bridge")?;
    let (node, _) = typescript_worker()?;
    let mut idle = Command::new(&node);
    idle.args(["-e", "console.error('idle'); setTimeout(() => {}, 120000);"]);
    bridges::a_process_without_the_bridge_is_refused(
        &env,
        idle,
        "has not loaded the Temporal SDK bridge (@temporalio/core-bridge's index.node",
    )
}

/// A Node process that loads a native module outside `@temporalio/core-bridge` (a copy of the
/// bridge under another package's name) is not taken for a worker: the bridge is known by its
/// package, not by being a `.node` file.
#[test]
fn a_node_process_with_an_unrelated_native_module_is_refused() -> anyhow::Result<()> {
    let env = Env::require("typescript_unrelated_module")?;
    let (node, _) = typescript_worker()?;
    let dir = env.logs.join(e2e::unique("unrelated-module"));
    let module = dir.join("node_modules/other-native/index.node");
    std::fs::create_dir_all(module.parent().unwrap_or(&dir))?;
    std::fs::copy(typescript_bridge()?, &module)?;
    let mut idle = Command::new(&node);
    idle.args([
        "-e",
        &format!(
            "process.dlopen({{ exports: {{}} }}, {:?}); console.error('idle'); \
             setTimeout(() => {{}}, 120000);",
            module.to_string_lossy()
        ),
    ]);
    bridges::a_process_without_the_bridge_is_refused_when(
        &env,
        idle,
        "has not loaded the Temporal SDK bridge (@temporalio/core-bridge's index.node",
        |pid| {
            // The copy is really loaded: the refusal is not for want of a module.
            let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
            anyhow::ensure!(
                maps.contains("other-native/index.node"),
                "the copy is not mapped:\n{maps}"
            );
            Ok(())
        },
    )
}

/// A Node process that requires the SDK (and so loads the bridge) two seconds after its exec.
fn node_requiring_late(env: &Env, server: &DevServer, task_queue: &str) -> anyhow::Result<Guard> {
    let (node, script) = typescript_worker()?;
    let log = env.logs.join("late-require-node.log");
    let file = std::fs::File::create(&log)?;
    // A script of its own (not `node -e`, under which Node parses arguments differently).
    let late = env.logs.join(format!("{}.js", e2e::unique("late-require")));
    std::fs::write(
        &late,
        format!(
            "setTimeout(() => {{ process.argv = [process.argv[0], {script:?}, '--address', \
             {url:?}, '--task-queue', {task_queue:?}]; require({script:?}); }}, 2000);\n",
            script = script.to_string_lossy(),
            url = server.url(),
        ),
    )?;
    let mut command = Command::new(&node);
    command.arg(&late).stdout(file.try_clone()?).stderr(file);
    Guard::spawn("node that requires the SDK late", command, log)
}

#[test]
fn watch_attaches_to_a_typescript_worker_within_a_second_of_it_loading_the_bridge()
-> anyhow::Result<()> {
    bridges::watch_attaches_within_a_second_of_the_bridge_loading(
        &TYPESCRIPT,
        "node*",
        node_requiring_late,
    )
}
