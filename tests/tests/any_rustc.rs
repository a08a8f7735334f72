//! Workers built by a rustc the layout table has no row for. Without DWARF and without a row for
//! the exact rustc, every row of the worker's sdk-core is a candidate: each is attached and read
//! live until the records pick exactly one, and nothing counts before that. Checked by holding a
//! toolchain out of the table (`--layout-table`: the shipped table without that rustc's row) and
//! observing a worker that toolchain built, exact against the server; and by candidates that are
//! wrong on purpose, which the live records must reject before anything is exported.
//!
//! Run plainly (as CI does) the held-out worker is the default release build (rustc 1.95, whose
//! row is removed); `cargo xtask matrix` runs the other toolchains' workers through
//! `E2E_HOLD_OUT_BIN` and `E2E_HOLD_OUT_RUSTC`. Holding out nightly's 1.97 leaves no row built
//! by a rustc of its niche rule: its worker is read through the 1.95/1.96 rows re-placed by that
//! rule (`layout::niche`).

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use e2e::{
    DevServer, Env, Mix, Observer, Worker,
    accuracy::{
        as_strs, assert_matches_server, every_run_ended, export_to, observe_worker_until, with,
    },
    drive,
    otlp::{Receiver, Transport},
    unique,
};
use temporal_observer::layout::SHIPPED_TABLE;

/// Runs that make a cache of one evict for room and replay: every end the worker sees.
fn cache_of_one() -> Mix {
    Mix {
        complete: 6,
        fail: 2,
        cancel: 2,
        activity_timeout: 1,
        continue_as_new: 2,
        continue_as_new_times: 2,
        signal: 3,
        server_timeout_ms: 2000,
        ..Mix::default()
    }
}

/// The shipped table's rows, as JSON values.
fn shipped_rows() -> anyhow::Result<Vec<serde_json::Value>> {
    Ok(serde_json::from_str(SHIPPED_TABLE)?)
}

fn write_table(env: &Env, name: &str, rows: &[serde_json::Value]) -> anyhow::Result<PathBuf> {
    let path = env.logs.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(rows)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The worker built by the held-out toolchain, and that toolchain's rustc version.
fn held_out(env: &Env) -> (PathBuf, String) {
    match (
        std::env::var_os("E2E_HOLD_OUT_BIN"),
        std::env::var("E2E_HOLD_OUT_RUSTC"),
    ) {
        (Some(binary), Ok(rustc)) => (PathBuf::from(binary), rustc),
        _ => (env.worker.clone(), "1.95.0".to_string()),
    }
}

#[test]
fn a_worker_of_a_held_out_rustc_is_verified_live_and_observed_exactly() -> anyhow::Result<()> {
    let env = Env::require("any_rustc")?;
    let (binary, rustc) = held_out(&env);
    let mut rows = shipped_rows()?;
    let before = rows.len();
    rows.retain(|r| r["rustc"] != rustc.as_str());
    assert!(
        rows.len() < before,
        "the table has no row for rustc {rustc}"
    );
    let table = write_table(&env, &format!("table-without-{rustc}.json"), &rows)?;
    let table_arg = table.to_string_lossy().to_string();

    // `inspect` names the candidates, what the binary said, and what will be verified live.
    let inspect = std::process::Command::new(&env.observer)
        .args(["--layout-table", &table_arg, "inspect", "--output", "json"])
        .arg(&binary)
        .output()?;
    let report: serde_json::Value = serde_json::from_slice(&inspect.stdout)?;
    assert!(inspect.status.success(), "{report}");
    assert_eq!(report["rustc"], rustc.as_str(), "{report}");
    assert_eq!(report["verification"], "live", "{report}");
    let candidates = report["candidates"].as_array().context("candidates")?;
    assert!(!candidates.is_empty(), "{report}");
    assert!(
        candidates
            .iter()
            .all(|c| c["layout_source"]["table"]["rustc"] != rustc.as_str()),
        "{report}"
    );
    assert!(
        report["verified_live"]
            .as_array()
            .is_some_and(|r| !r.is_empty()),
        "{report}"
    );
    assert!(
        report["static_evidence"]
            .as_array()
            .is_some_and(|e| e.iter().any(|e| e
                .as_str()
                .is_some_and(|e| e.contains("no row for this rustc")))),
        "{report}"
    );

    let worker = Worker::Rust(binary);
    let through_candidates = ["--layout-table", table_arg.as_str()];
    // Cache pressure: a cache of one evicts runs for room and replays them from history.
    let pressure = observe_worker_until(
        &env,
        &worker,
        Transport::Http,
        &["--max-cached-workflows", "1"],
        &through_candidates,
        &cache_of_one(),
        &every_run_ended,
    )?;
    assert_matches_server(&pressure);
    assert!(
        pressure
            .lines
            .iter()
            .any(|l| l["probe"] == "eviction" && l["reason_name"] == "CacheFull"),
        "no cache pressure"
    );
    // Late attach: runs under way before the attach end counted under their types, no start.
    let late =
        e2e::accuracy::observe_late_attach(&env, &worker, "held-out-late", &through_candidates)?;
    assert!(late.log.contains("layout verified after"), "{}", late.log);
    // Every end state.
    let outcome = observe_worker_until(
        &env,
        &worker,
        Transport::Grpc,
        &[],
        &through_candidates,
        &Mix::every_end_state(),
        &every_run_ended,
    )?;
    assert_matches_server(&outcome);
    let verified = outcome
        .log
        .lines()
        .find(|l| l.contains("layout verified after"))
        .with_context(|| format!("no verification in the log:\n{}", outcome.log))?;
    assert!(verified.contains("probes are detached"), "{verified}");
    assert_eq!(
        outcome
            .received
            .int("temporal_observer_records_unverified_total", ""),
        Some(0)
    );
    assert_eq!(
        outcome
            .received
            .int("temporal_observer_layout_rejected_total", ""),
        Some(0)
    );
    // One set of probes per candidate until the decision, then one set stays.
    let number_after = |line: &str, marker: &str| -> Option<i64> {
        line.split_once(marker)?.1.split(' ').next()?.parse().ok()
    };
    let stayed = number_after(verified, "probes are detached (").context("probes that stay")?;
    let attached = outcome
        .log
        .lines()
        .find_map(|l| number_after(l, "attached "))
        .context("attached probes")?;
    assert_eq!(
        attached,
        stayed * candidates.len() as i64,
        "{}",
        outcome.log
    );
    // What stays in the end: that set, less the probe that names the workers running at
    // attach once it has (`… (N probes stay)`, the last such line).
    let last_stay = outcome
        .log
        .lines()
        .rev()
        .find_map(|l| {
            l.split_once(" probes stay)")?
                .0
                .rsplit('(')
                .next()?
                .parse::<i64>()
                .ok()
        })
        .context("no line says how many probes stay")?;
    assert!(
        last_stay == stayed || last_stay == stayed - 1,
        "{}",
        outcome.log
    );
    assert_eq!(
        outcome
            .received
            .int("temporal_observer_probes_attached", ""),
        Some(last_stay)
    );
    Ok(())
}

/// Wrong candidates for the release worker: its own row with the activation's run id one word
/// off (and that row re-placed by the other niche rule), and the row of the other niche rule
/// (nightly's) without its niche chains, so that it is not re-placed into the right one. The
/// live records contradict all; the observer stops with an error naming them and what did not
/// fit, counts the rejection, and exports no workflow number at all while the server records
/// every run.
#[test]
fn wrong_candidates_are_rejected_live_and_nothing_is_counted() -> anyhow::Result<()> {
    let env = Env::require("any_rustc")?;
    let rows = shipped_rows()?;
    let row = |rustc: &str| {
        rows.iter()
            .find(|r| r["rustc"] == rustc)
            .cloned()
            .with_context(|| format!("no row for rustc {rustc}"))
    };
    let mut moved = row("1.95.0")?;
    let offset = moved["offsets"]["activation_run_id"]
        .as_u64()
        .context("offset")?;
    moved["offsets"]["activation_run_id"] = (offset + 8).into();
    moved["rustc"] = "1.95.0-moved".into();
    let mut other_rule = row("1.97.0-nightly")?;
    other_rule
        .as_object_mut()
        .context("a row is an object")?
        .remove("niches")
        .context("the nightly row has niche chains")?;
    let table = write_table(&env, "wrong-candidates.json", &[moved, other_rule])?;

    let server = DevServer::start(&env)?;
    let receiver = Receiver::start(Transport::Grpc)?;
    let task_queue = unique("wrong-candidates");
    let worker = Worker::Rust(env.worker.clone()).start(&env, &server, &task_queue, &[])?;
    let args = with(
        export_to(&receiver),
        &["--layout-table", &table.to_string_lossy()],
    );
    let mut observer = Observer::attach(&env, worker.pid(), &as_strs(&args))?;
    let truth = drive(
        &env,
        &server,
        &task_queue,
        &task_queue,
        &Mix::every_end_state(),
    )?;
    assert!(!truth.runs.is_empty());
    let status = observer.process.wait_exit(Duration::from_secs(30))?;
    let log = std::fs::read_to_string(&observer.process.log)?;
    assert!(!status.success(), "the observer went on:\n{log}");
    let error = log
        .lines()
        .find(|l| l.starts_with("error:"))
        .with_context(|| format!("no error line:\n{log}"))?;
    for must in [
        "sdk-core 0.10.1, rustc 1.95.0",
        "no candidate layout fits",
        "rustc 1.95.0-moved",
        "rustc 1.97.0-nightly",
        "completion status tag",
    ] {
        assert!(error.contains(must), "`{must}` missing from: {error}");
    }
    // The moved run id reads a wrong length or leads out of the worker's data.
    assert!(
        error.contains("an activation's run id") || error.contains("could not be read"),
        "{error}"
    );
    let received = receiver.wait_for(Duration::from_secs(10), "the rejection", |r| {
        r.int("temporal_observer_layout_rejected_total", "") == Some(1)
    })?;
    // The server recorded every run; the observer counted none of them.
    let counted: Vec<&String> = received
        .series
        .keys()
        .filter(|name| name.starts_with("compozy_temporal_workflow_"))
        .collect();
    assert!(
        counted.is_empty(),
        "exported from a rejected layout: {counted:?}"
    );
    assert_ne!(
        received.int("compozy_temporal_workers_running_total", ""),
        Some(1)
    );
    assert!(
        received
            .int("temporal_observer_records_unverified_total", "")
            .is_some_and(|n| n > 0)
    );
    assert_eq!(
        received.int("temporal_observer_targets_observed", ""),
        Some(0)
    );
    Ok(())
}

/// sdk-core drift: a newer sdk-core (0.11) has no `create_evict_activation`, the function the
/// eviction probe uses. Made here by removing that symbol from the release worker's symbol
/// table: the plan takes the next point, `ManagedRun::request_eviction`, with registers from
/// the table's build that has all of the binary's probe functions (no longer exactly them, so
/// they are verified live), and every count stays exact, also when a cache of one evicts runs
/// for room all the time.
#[test]
fn without_create_evict_activation_evictions_come_from_eviction_requests() -> anyhow::Result<()> {
    let env = Env::require("any_rustc_drift")?;
    let symbols = std::process::Command::new("nm").arg(&env.worker).output()?;
    let mangled = String::from_utf8_lossy(&symbols.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .find(|name| name.contains("create_evict_activation"))
        .context("the release worker has no create_evict_activation symbol")?
        .to_string();
    let drifted = env.logs.join("sample-worker");
    let objcopy = std::process::Command::new("objcopy")
        .arg(format!("--strip-symbol={mangled}"))
        .arg(&env.worker)
        .arg(&drifted)
        .output()
        .context("running objcopy (binutils, installed by `cargo xtask setup`)")?;
    assert!(
        objcopy.status.success(),
        "objcopy failed: {}",
        String::from_utf8_lossy(&objcopy.stderr)
    );

    let inspect = std::process::Command::new(&env.observer)
        .args(["inspect", "--output", "json"])
        .arg(&drifted)
        .output()?;
    let report: serde_json::Value = serde_json::from_slice(&inspect.stdout)?;
    assert!(inspect.status.success(), "{report}");
    let eviction = report["probes"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "eviction"))
        .context("eviction probe")?;
    assert!(
        eviction["function"]
            .as_str()
            .is_some_and(|f| f.ends_with("ManagedRun::request_eviction")),
        "{eviction}"
    );
    assert!(
        report["not_covered"]
            .as_array()
            .is_some_and(|n| n.iter().any(|n| n
                .as_str()
                .is_some_and(|n| n.contains("create_evict_activation")))),
        "{report}"
    );
    assert_eq!(report["verification"], "live", "{report}");

    for (worker_args, mix) in [
        (&[][..], Mix::every_end_state()),
        (&["--max-cached-workflows", "1"][..], cache_of_one()),
    ] {
        let outcome = observe_worker_until(
            &env,
            &Worker::Rust(drifted.clone()),
            Transport::Grpc,
            worker_args,
            &[],
            &mix,
            &every_run_ended,
        )?;
        assert_matches_server(&outcome);
        assert!(
            outcome.log.contains("layout verified after"),
            "{}",
            outcome.log
        );
        // The evictions came through the new point, each naming a run the server knows.
        let runs: std::collections::BTreeSet<&str> = outcome
            .truth
            .runs
            .iter()
            .map(|r| r.run_id.as_str())
            .collect();
        let evicted: Vec<&str> = outcome
            .lines
            .iter()
            .filter(|l| l["probe"] == "eviction")
            .filter_map(|l| l["run_id"].as_str())
            .collect();
        assert!(!evicted.is_empty());
        assert!(evicted.iter().all(|r| runs.contains(r)), "{evicted:?}");
        if !worker_args.is_empty() {
            let for_room = outcome
                .lines
                .iter()
                .filter(|l| l["probe"] == "eviction" && l["reason_name"] == "CacheFull")
                .count();
            assert!(for_room > 0, "no cache pressure");
        }
    }
    Ok(())
}
