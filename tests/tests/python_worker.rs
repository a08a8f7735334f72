//! Python workers: sdk-core inside the Python SDK's bridge (PyPI `temporalio`, pinned in
//! tests/fixtures/python-worker), observed through the protobuf messages it hands over, against
//! the Temporal server's own record of the same runs.

#[path = "support/replay.rs"]
mod replay;

use replay::assert_replay_equals_export;
use std::{process::Command, time::Duration};

use e2e::{
    Env, GroundTruth, Guard, Mix, Worker,
    accuracy::{
        ENDS, STARTED, assert_matches_server, expected, observe_worker, observe_worker_until,
        total_ends,
    },
    otlp::{Received, Transport},
    python_worker,
};

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
    for key in ["process.runtime.name", "telemetry.sdk.language"] {
        assert_eq!(
            outcome.received.resource.get(key).map(String::as_str),
            Some("python"),
            "{key}"
        );
    }
    // Every record was a whole message: none cut, none missing a chunk.
    assert!(
        outcome.log.contains("truncated=0, incomplete=0"),
        "{}",
        outcome.log
    );
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
    assert!(
        outcome.log.contains("truncated=0, incomplete=0"),
        "{}",
        outcome.log
    );
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
