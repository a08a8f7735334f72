//! A worker's process and files changing under the observer: its executable replaced on disk
//! while it is observed, and its PID taken by another process right after it exits.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::Context as _;
use e2e::{
    DevServer, Env, GroundTruth, Guard, Mix, Observer,
    accuracy::{as_strs, assert_counts_match, every_run_ended, export_to, with},
    drive,
    otlp::{Receiver, Transport},
    start_worker_binary, unique,
};

fn mix() -> Mix {
    Mix {
        complete: 3,
        fail: 1,
        cancel: 1,
        signal: 1,
        continue_as_new: 1,
        continue_as_new_times: 1,
        ..Mix::default()
    }
}

#[test]
fn a_worker_whose_executable_is_replaced_on_disk_is_still_observed_exactly() -> anyhow::Result<()> {
    let env = Env::require("hostile_replaced")?;
    let server = DevServer::start(&env)?;
    let receiver = Receiver::start(Transport::Http)?;
    // The worker runs from a copy the test may replace, as a deployment replaces a binary in
    // place (a new file renamed over the old path; the running process keeps the old one).
    let dir = env.logs.join(unique("bin"));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("sample-worker");
    std::fs::copy(&env.worker, &path)?;
    let task_queue = unique("replaced");
    let worker = start_worker_binary(&env, &path, &server, &task_queue, &[])?;
    let args = with(export_to(&receiver), &[]);
    let observer = Observer::attach(&env, worker.pid(), &as_strs(&args))?;
    let before = drive(&env, &server, &task_queue, &unique("before"), &mix())?;

    let replacement = dir.join("sample-worker.new");
    std::fs::copy("/bin/true", &replacement)?;
    std::fs::rename(&replacement, &path).context("replacing the executable")?;
    let after = drive(&env, &server, &task_queue, &unique("after"), &mix())?;

    let all = GroundTruth {
        runs: before.runs.iter().chain(&after.runs).cloned().collect(),
        ..before
    };
    receiver.wait_for(Duration::from_secs(30), "every run's end", |r| {
        every_run_ended(r, &all)
    })?;
    let (status, _, log) = observer.stop()?;
    assert!(status.success(), "{log}");
    assert!(
        log.contains("lost=0 read_faults=0, undecodable=0,"),
        "{log}"
    );
    assert_counts_match(&receiver.received(), &all);
    Ok(())
}

/// Starts `sleep` with exactly `pid` (through `ns_last_pid`, retried while other processes
/// take PIDs meanwhile).
fn spawn_with_pid(env: &Env, pid: u32) -> anyhow::Result<Guard> {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .context("writing /proc/sys/kernel/ns_last_pid (needs root)")?;
        let (log, file) = env.log(&unique("pid-reuser"))?;
        let mut command = Command::new("sleep");
        command
            .arg("120")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let sleeper = Guard::spawn("a process reusing the PID", command, log)?;
        if sleeper.pid() == pid {
            return Ok(sleeper);
        }
    }
    anyhow::bail!("could not get PID {pid} for a new process in 50 tries")
}

#[test]
fn a_pid_reused_right_after_the_worker_exits_ends_its_session() -> anyhow::Result<()> {
    let env = Env::require("hostile_pid_reuse")?;
    let server = DevServer::start(&env)?;
    let receiver = Receiver::start(Transport::Http)?;
    let task_queue = unique("reuse");
    let mut worker = start_worker_binary(&env, &env.worker, &server, &task_queue, &[])?;
    let pid = worker.pid();
    let args = with(export_to(&receiver), &[]);
    let observer = Observer::attach(&env, pid, &as_strs(&args))?;
    let truth = drive(&env, &server, &task_queue, &unique("runs"), &mix())?;
    receiver.wait_for(Duration::from_secs(30), "every run's end", |r| {
        every_run_ended(r, &truth)
    })?;

    // Frozen, the observer cannot see the worker go before its PID is taken again.
    let signal = |sig| {
        // SAFETY: kill has no memory preconditions; the pid is our own child.
        unsafe { libc::kill(observer.process.pid() as libc::pid_t, sig) }
    };
    signal(libc::SIGSTOP);
    worker.stop_with(libc::SIGKILL, Duration::from_secs(10))?;
    let reuser = spawn_with_pid(&env, pid);
    signal(libc::SIGCONT);
    let _reuser = reuser?;
    assert!(Path::new(&format!("/proc/{pid}")).exists());

    // It tells the new process from the worker, ends the session as the worker's exit, and
    // exits by itself.
    let mut observer = observer;
    observer
        .process
        .wait_for_log("the worker exited", Duration::from_secs(10))?;
    let status = observer.process.wait_exit(Duration::from_secs(20))?;
    let log = std::fs::read_to_string(&observer.process.log)?;
    assert!(status.success(), "{log}");
    let received = receiver.received();
    assert_counts_match(&received, &truth);
    assert_eq!(
        received.int("compozy_temporal_workers_running_total", ""),
        Some(0),
        "the worker is gone, whatever now has its PID"
    );
    Ok(())
}
