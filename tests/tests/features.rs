//! The workflow features beyond the end states (child workflows and parent-close policies, local
//! activities, updates, signal-with-start, failing and nondeterministic workflow tasks, retries,
//! cron, terminations, resets), a worker without a cache, and two workers in one process: each
//! against the Temporal server's own record of the same runs.

#[path = "support/features.rs"]
mod features;

use std::time::Duration;

use e2e::{
    DevServer, Env, Features, GroundTruth, Mix, Observer, Worker,
    accuracy::{as_strs, assert_counts_match, every_run_ended, export_to, with},
    drive,
    otlp::{Receiver, Transport},
    parse_events, start_worker, unique,
};

#[test]
fn every_sdk_feature_counts_what_the_server_records() -> anyhow::Result<()> {
    features::every_sdk_feature_counts_what_the_server_records("features", |env| {
        Worker::Rust(env.worker.clone())
    })
}

#[test]
fn without_a_cache_every_task_replays_and_counts_stay_exact() -> anyhow::Result<()> {
    features::without_a_cache_every_task_replays_and_counts_stay_exact("features_no_cache", |env| {
        Worker::Rust(env.worker.clone())
    })
}

#[test]
fn two_workers_in_one_process_count_apart_and_one_stops_while_the_other_works() -> anyhow::Result<()>
{
    let env = Env::require("features_two_workers")?;
    let server = DevServer::start(&env)?;
    let receiver = Receiver::start(Transport::Grpc)?;
    let (first_queue, second_queue) = (unique("first-queue"), unique("second-queue"));
    let mut worker = start_worker(
        &env,
        &server,
        &first_queue,
        &["--task-queue", &second_queue],
    )?;
    let args = with(
        export_to(&receiver),
        &["--print-updates", "--format", "json"],
    );
    let observer = Observer::attach(&env, worker.pid(), &as_strs(&args))?;
    let mix = Mix {
        features: Features {
            update: 1,
            parent_plans: 1,
            ..Features::default()
        },
        ..Mix::every_end_state()
    };
    let on_first = e2e::Driver::spawn(&env, &server, &first_queue, &unique("a"), &mix, None)?;
    let on_second = drive(&env, &server, &second_queue, &unique("b"), &mix)?;
    let on_first = on_first.wait()?;
    let both = merged(&[&on_first, &on_second]);
    let received = receiver.wait_for(Duration::from_secs(30), "both queues' runs", |r| {
        every_run_ended(r, &both)
    })?;
    assert_eq!(
        received.int("compozy_temporal_workers_running_total", ""),
        Some(2)
    );

    // SAFETY: kill has no memory preconditions; the pid is our own child.
    unsafe { libc::kill(worker.pid() as libc::pid_t, libc::SIGUSR1) };
    worker.wait_for_log(
        &format!("worker of {second_queue} stopped"),
        Duration::from_secs(30),
    )?;
    receiver.wait_for(Duration::from_secs(10), "one worker running", |r| {
        r.int("compozy_temporal_workers_running_total", "") == Some(1)
    })?;
    let after = drive(&env, &server, &first_queue, &unique("c"), &mix)?;
    let all = merged(&[&on_first, &on_second, &after]);
    receiver.wait_for(Duration::from_secs(30), "every run", |r| {
        every_run_ended(r, &all)
    })?;
    let (status, stdout, log) = observer.stop()?;
    assert!(status.success(), "{log}");
    let received = receiver.received();
    assert_counts_match(&received, &all);
    assert_eq!(
        received.int("compozy_temporal_workers_running_total", ""),
        Some(1),
        "one of the two stopped"
    );
    assert_eq!(
        received.int("compozy_temporal_workers_configured_total", ""),
        Some(2),
        "two distinct workers seen"
    );
    let deltas: Vec<i64> = parse_events(&stdout)?
        .iter()
        .filter(|l| l["update"] == "workers_running")
        .filter_map(|l| l["delta"].as_i64())
        .collect();
    assert_eq!(deltas, vec![1, 1, -1], "two started, one stopped");
    Ok(())
}

fn merged(truths: &[&GroundTruth]) -> GroundTruth {
    GroundTruth {
        namespace: truths[0].namespace.clone(),
        task_queue: truths[0].task_queue.clone(),
        runs: truths.iter().flat_map(|t| t.runs.clone()).collect(),
    }
}

/// A fleet on one task queue, every process observed by one `watch`: the first worker takes the
/// first tasks of waiting runs (they stay on its sticky queue), then spins in the first task of
/// a slow run with more tasks queued behind it, and is killed with SIGKILL there. Two more
/// workers take over: the sticky runs' next tasks (after the sticky queue's timeout) and the
/// lost first tasks (after their task timeout). Summed over the three processes' resources, as a
/// backend sums them, every counter equals the server's record: the lost first tasks start
/// their runs once (on the worker that completed them), the sticky runs end once.
#[test]
fn a_fleet_with_a_worker_killed_mid_task_counts_each_run_once() -> anyhow::Result<()> {
    let env = Env::require("features_fleet")?;
    let server = DevServer::start(&env)?;
    let receiver = Receiver::start(Transport::Grpc)?;
    let observer = Observer::watch(
        &env,
        &[],
        &[
            "--exe-glob",
            "sample-worker",
            "--otlp-endpoint",
            &receiver.endpoint,
            "--otlp-protocol",
            "grpc",
            "--metric-export-interval-ms",
            "500",
            "--print-events",
            "--format",
            "json",
        ],
    )?;
    let mut observer = observer;
    let queue = unique("fleet");
    let attached = |pid: u32| format!("attached 6 probes to PID {pid} (");
    let mut victim = start_worker(&env, &server, &queue, &[])?;
    observer
        .process
        .wait_for_log(&attached(victim.pid()), Duration::from_secs(10))?;

    // Runs whose first task the victim completes: they wait on its sticky queue.
    let waiting = Mix {
        signal: 4,
        cancel: 2,
        complete: 2,
        ..Mix::default()
    };
    let gate = env.logs.join(unique("fleet-gate"));
    let sticky = e2e::Driver::spawn(
        &env,
        &server,
        &queue,
        &unique("sticky"),
        &waiting,
        Some(gate),
    )?;
    std::thread::sleep(Duration::from_secs(1));
    // Then load it: a first task that spins, and more queued behind it.
    let load = Mix {
        complete: 3,
        features: Features {
            slow_first_task: 2,
            ..Features::default()
        },
        ..Mix::default()
    };
    let lost = e2e::Driver::spawn(&env, &server, &queue, &unique("lost"), &load, None)?;
    victim.wait_for_log("spinning in the first task", Duration::from_secs(30))?;
    // Any completion handed back before the spin has reached the server by now.
    std::thread::sleep(Duration::from_millis(300));
    let victim_pid = victim.pid();
    // SAFETY: kill has no memory preconditions; the pid is our own child.
    unsafe { libc::kill(victim_pid as libc::pid_t, libc::SIGKILL) };
    victim.wait_exit(Duration::from_secs(10))?;

    let survivors = [
        start_worker(&env, &server, &queue, &[])?,
        start_worker(&env, &server, &queue, &[])?,
    ];
    for worker in &survivors {
        observer
            .process
            .wait_for_log(&attached(worker.pid()), Duration::from_secs(10))?;
    }
    let sticky = sticky.wait()?;
    let lost = lost.wait()?;
    let all = merged(&[&sticky, &lost]);
    receiver.wait_for(Duration::from_secs(30), "every run's end", |r| {
        every_run_ended(&r.summed(), &all)
    })?;
    let (status, stdout, log) = observer.stop()?;
    assert!(status.success(), "watch exited with {status}; log:\n{log}");
    let received = receiver.received();
    assert_eq!(
        received.processes.len(),
        3,
        "one resource per process: {:?}",
        received.processes.keys()
    );
    let summed = received.summed();
    assert_counts_match(&summed, &all);
    assert_eq!(
        summed.int("compozy_temporal_workers_running_total", ""),
        Some(2),
        "the killed worker's is 0"
    );

    // The scenario happened as described: the victim ran the sticky runs' first tasks and
    // began the slow runs' first tasks, and ended none of them.
    let events = parse_events(&stdout)?;
    let victims_activations = |workflow_type: &str| {
        events
            .iter()
            .filter(|e| e["pid"] == victim_pid && e["probe"] == "activation")
            .filter(|e| e["init"]["workflow_type"] == workflow_type)
            .count()
    };
    assert_eq!(victims_activations("SignalWorkflow"), waiting.signal);
    assert!(
        victims_activations("SlowFirstTaskWorkflow") >= 1,
        "the victim began a slow first task"
    );
    let at_victim = &received.processes[&victim_pid.to_string()];
    assert_eq!(
        at_victim.int(e2e::accuracy::ENDS[0], "SignalWorkflow"),
        None,
        "the sticky runs ended elsewhere"
    );
    assert_eq!(
        at_victim.int(e2e::accuracy::STARTED, "SlowFirstTaskWorkflow"),
        None,
        "a first task the victim never completed is not its start"
    );
    Ok(())
}
