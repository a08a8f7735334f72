//! Bad input gets a clear error and a non-zero exit, and nothing stays attached.

use std::process::{Command, Stdio};

use e2e::{
    DevServer, Env, Guard, run_observer, run_observer_via, start_worker, start_worker_binary,
    unique,
};

fn assert_refused(status: std::process::ExitStatus, stderr: &str, expected: &str) {
    assert!(
        !status.success(),
        "expected a failure mentioning {expected:?}, got success:\n{stderr}"
    );
    assert!(
        stderr.contains(expected),
        "expected {expected:?} in:\n{stderr}"
    );
    assert!(
        !stderr.contains("attached"),
        "nothing may be attached:\n{stderr}"
    );
}

#[test]
fn a_pid_that_does_not_exist() -> anyhow::Result<()> {
    let env = Env::require("attach_errors")?;
    // A pid that just exited; pids are not reused this fast.
    let mut gone = Command::new("true").spawn()?;
    let pid = gone.id();
    gone.wait()?;
    let (status, stderr) = run_observer(&env, &["attach", "--pid", &pid.to_string()])?;
    assert_refused(status, &stderr, &format!("no process with PID {pid}"));
    Ok(())
}

/// The worker disappears while the observer reads its executable and attaches: a clear error,
/// whichever step it vanished at, and nothing left attached.
#[test]
fn a_pid_that_exits_during_attach() -> anyhow::Result<()> {
    let env = Env::require("attach_errors")?;
    // A worker that is stopped before it runs a line, so that it exists when the observer
    // starts; it is killed while the observer resolves it (reading and parsing take ~200 ms).
    let mut worker = Command::new(&env.worker)
        .args(["--address", "http://127.0.0.1:1", "--task-queue", "gone"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = worker.id();
    // SAFETY: kill has no memory preconditions; the pid is our own child.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGSTOP) };
    let observer = Command::new(&env.observer)
        .args(["attach", "--pid", &pid.to_string(), "--no-export"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(std::time::Duration::from_millis(60));
    worker.kill()?;
    worker.wait()?;
    let output = observer.wait_with_output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    let exited = format!("PID {pid} (sample-worker) exited while the observer was attaching to it");
    let gone = format!("no process with PID {pid}");
    let expected = if stderr.contains(&gone) { gone } else { exited };
    eprintln!("the worker vanished at: {expected}");
    assert_refused(output.status, &stderr, &expected);
    Ok(())
}

#[test]
fn a_process_that_is_not_a_temporal_worker() -> anyhow::Result<()> {
    let env = Env::require("attach_errors")?;
    let mut sleeper = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()?;
    let (status, stderr) = run_observer(&env, &["attach", "--pid", &sleeper.id().to_string()])?;
    sleeper.kill()?;
    sleeper.wait()?;
    assert_refused(status, &stderr, "this is not a Temporal Rust worker");
    Ok(())
}

#[test]
fn a_worker_without_symbols_and_a_user_without_privileges() -> anyhow::Result<()> {
    let env = Env::require("attach_errors")?;
    let server = DevServer::start(&env)?;

    // What `strip = "symbols"` produces.
    let stripped = env.logs.join("sample-worker-stripped");
    let objcopy = Command::new("objcopy")
        .arg("--strip-all")
        .arg(&env.worker)
        .arg(&stripped)
        .status();
    assert!(
        objcopy.is_ok_and(|s| s.success()),
        "objcopy (binutils) is needed to make a stripped worker"
    );
    let worker: Guard = start_worker_binary(&env, &stripped, &server, &unique("stripped"), &[])?;
    let (status, stderr) = run_observer(&env, &["attach", "--pid", &worker.pid().to_string()])?;
    assert_refused(status, &stderr, "it was stripped");
    assert!(
        stderr.contains("links sdk-core 0.10.1") && stderr.contains("strip = \"symbols\""),
        "{stderr}"
    );
    drop(worker);

    // Root without the capabilities that BPF and uprobes need.
    let worker = start_worker(&env, &server, &unique("unprivileged"), &[])?;
    let drop_caps = [
        "setpriv",
        "--inh-caps=-bpf,-perfmon,-sys_admin",
        "--bounding-set=-bpf,-perfmon,-sys_admin",
    ];
    let (status, stderr) = run_observer_via(
        &env,
        &drop_caps,
        &["attach", "--pid", &worker.pid().to_string()],
    )?;
    assert_refused(status, &stderr, "missing privileges: CAP_SYS_ADMIN");
    Ok(())
}

/// A worker built by a rustc the table has no entry for, without DWARF, and of an sdk-core
/// release line the table has no row of: refused, naming both versions and what to do. (Made
/// by rewriting the release worker's `.comment`, with a table whose rows are all of sdk-core
/// 0.9; a rustc without a row but with rows of its sdk-core is read through verified
/// candidates, see `any_rustc.rs`.)
#[test]
fn a_worker_from_an_unknown_rustc_and_sdk_core_line_is_refused_naming_the_versions()
-> anyhow::Result<()> {
    let env = Env::require("attach_errors")?;
    let server = DevServer::start(&env)?;
    let comment = env.logs.join("comment");
    std::fs::write(&comment, b"rustc version 1.99.9 (0000000 2030-01-01)\0")?;
    let unknown = env.logs.join("sample-worker-rustc-1.99.9");
    let objcopy = Command::new("objcopy")
        .arg(format!("--update-section=.comment={}", comment.display()))
        .arg(&env.worker)
        .arg(&unknown)
        .status();
    assert!(
        objcopy.is_ok_and(|s| s.success()),
        "objcopy (binutils) is needed to make the worker"
    );
    let mut rows: Vec<serde_json::Value> =
        serde_json::from_str(temporal_observer::layout::SHIPPED_TABLE)?;
    for row in &mut rows {
        row["sdk_core"] = "0.9.0".into();
    }
    let table = env.logs.join("table-of-0.9.json");
    std::fs::write(&table, serde_json::to_string(&rows)?)?;
    let worker = start_worker_binary(&env, &unknown, &server, &unique("unknown-rustc"), &[])?;
    let (status, stderr) = run_observer(
        &env,
        &[
            "--layout-table",
            &table.to_string_lossy(),
            "attach",
            "--pid",
            &worker.pid().to_string(),
        ],
    )?;
    assert_refused(
        status,
        &stderr,
        "no layout for sdk-core 0.10.1 built by rustc 1.99.9, and the binary has no DWARF",
    );
    assert!(
        stderr.contains("no row for this sdk-core release line"),
        "{stderr}"
    );
    assert!(stderr.contains("gen-layouts"), "{stderr}");
    Ok(())
}

/// Malformed flags and environment variables are refused before anything is loaded.
#[test]
fn malformed_flags_and_environment_are_refused() -> anyhow::Result<()> {
    let env = Env::require("attach_errors")?;
    let server = DevServer::start(&env)?;
    let worker = start_worker(&env, &server, &unique("malformed"), &[])?;
    let pid = worker.pid().to_string();

    let (status, stderr) = run_observer(
        &env,
        &["attach", "--pid", &pid, "--ring-buffer-bytes", "1000"],
    )?;
    assert_refused(
        status,
        &stderr,
        "1000 is not a power of two of at least 4096",
    );
    let (status, stderr) = run_observer(&env, &["attach", "--pid", "twelve"])?;
    assert_refused(status, &stderr, "invalid value 'twelve' for '--pid <PID>'");
    let (status, stderr) =
        run_observer(&env, &["watch", "--exe-glob", "[", "--duration-secs", "1"])?;
    assert_refused(
        status,
        &stderr,
        "an --exe-glob or --exclude-glob pattern is malformed",
    );

    let output = Command::new(&env.observer)
        .args(["attach", "--pid", &pid])
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
        .stdin(Stdio::null())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_refused(
        output.status,
        &stderr,
        "OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\" is not a supported OTLP protocol",
    );
    Ok(())
}

/// An unreachable endpoint does not stop observation: it is reported once, and retried.
#[test]
fn an_unreachable_endpoint_is_reported_and_observation_goes_on() -> anyhow::Result<()> {
    let env = Env::require("attach_errors")?;
    let server = DevServer::start(&env)?;
    let worker = start_worker(&env, &server, &unique("unreachable"), &[])?;
    // A port nothing listens on.
    let port = e2e::free_port()?;
    let endpoint = format!("http://127.0.0.1:{port}");
    let mut observer = e2e::Observer::attach(
        &env,
        worker.pid(),
        &[
            "--otlp-endpoint",
            &endpoint,
            "--metric-export-interval-ms",
            "300",
        ],
    )?;
    observer.process.wait_for_log(
        &format!("exporting metrics to {endpoint} failed"),
        std::time::Duration::from_secs(15),
    )?;
    assert!(observer.process.is_running(), "it keeps observing");
    let (status, _, log) = observer.stop()?;
    assert!(status.success(), "{log}");
    let reports = log
        .lines()
        .filter(|l| l.contains(&format!("exporting metrics to {endpoint}")) && l.contains("failed"))
        .count();
    assert_eq!(
        reports, 1,
        "reported once per streak, not at every interval:\n{log}"
    );
    Ok(())
}
