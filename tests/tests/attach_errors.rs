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
    assert_refused(
        status,
        &stderr,
        "missing privileges: CAP_BPF and CAP_PERFMON",
    );
    Ok(())
}
