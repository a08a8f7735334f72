//! `temporal-observer watch` on a host where workers come and go: it finds each one (one in its
//! own PID and mount namespaces, as in a container; one a new build replacing a stopped one),
//! attaches within a second of its exec, and
//! each process's metrics, under its own resource, equal the server's record for its task queue.
//! Then the same with only the capabilities the DaemonSet grants, and a refusal naming each one
//! taken away.

use std::{collections::BTreeMap, time::Duration};

use anyhow::Context as _;
use e2e::{
    DevServer, Env, GroundTruth, Mix, Observer,
    accuracy::{assert_counts_match, every_run_ended},
    drive, fixture_worker,
    otlp::{Receiver, Transport},
    run_observer_via, start_worker_binary, start_worker_in_namespaces, unique,
};

/// The capabilities `deploy/kubernetes/daemonset.yaml` adds; nothing else is kept.
const MANIFEST_CAPABILITIES: [&str; 2] = ["sys_admin", "sys_ptrace"];

fn setpriv_keeping(capabilities: &[&str]) -> Vec<String> {
    let keep: String = capabilities.iter().map(|c| format!(",+{c}")).collect();
    vec![
        "setpriv".to_string(),
        format!("--bounding-set=-all{keep}"),
        "--inh-caps=-all".to_string(),
    ]
}

fn mix(complete: usize) -> Mix {
    Mix {
        complete,
        fail: 1,
        cancel: 1,
        signal: 1,
        continue_as_new: 1,
        continue_as_new_times: 1,
        ..Mix::default()
    }
}

/// Three workers at different times, one in its own namespaces, one stopped mid-way; returns
/// the attach latencies the observer reported.
fn scenario(env: &Env, server: &DevServer, wrapper: &[String]) -> anyhow::Result<Vec<f64>> {
    let receiver = Receiver::start(Transport::Grpc)?;
    let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
    let mut observer = Observer::watch(
        env,
        &wrapper,
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
    let lto = fixture_worker("lto")?;
    let mut truths: BTreeMap<u32, GroundTruth> = BTreeMap::new();

    // A: a default release build, started after the observer; stopped after its workload.
    let queue_a = unique("watch-a");
    let mut worker_a = start_worker_binary(env, &env.worker, server, &queue_a, &[])?;
    // B: the LTO build in its own PID and mount namespaces.
    let queue_b = unique("watch-b");
    let (_namespaced, pid_b) = start_worker_in_namespaces(env, &lto, server, &queue_b)?;
    // A worker polls before `watch` has finished reading its executable (a few hundred ms);
    // what it does before the probes are in place is not seen, so the workload waits for them.
    // A release build has one probe more than LTO: `mark_started`, until its running worker
    // is named.
    let attached = |pid: u32, probes: u32| format!("attached {probes} probes to PID {pid} (");
    for (pid, probes) in [(worker_a.pid(), 6), (pid_b, 5)] {
        observer
            .process
            .wait_for_log(&attached(pid, probes), Duration::from_secs(10))?;
    }
    truths.insert(
        worker_a.pid(),
        drive(env, server, &queue_a, &queue_a, &mix(3))?,
    );
    truths.insert(pid_b, drive(env, server, &queue_b, &queue_b, &mix(2))?);
    let pid_a = worker_a.pid();
    worker_a.stop_with(libc::SIGTERM, Duration::from_secs(20))?;
    // C: after A is gone, a new version of the worker (the LTO build): re-resolved, attached.
    let queue_c = unique("watch-c");
    let worker_c = start_worker_binary(env, &lto, server, &queue_c, &[])?;
    observer
        .process
        .wait_for_log(&attached(worker_c.pid(), 5), Duration::from_secs(10))?;
    truths.insert(
        worker_c.pid(),
        drive(env, server, &queue_c, &queue_c, &mix(4))?,
    );

    receiver.wait_for(Duration::from_secs(30), "every process's ends", |r| {
        truths.iter().all(|(pid, truth)| {
            r.processes
                .get(&pid.to_string())
                .is_some_and(|p| every_run_ended(p, truth))
        })
    })?;
    let (status, _stdout, log) = observer.stop()?;
    assert!(status.success(), "watch exited with {status}; log:\n{log}");
    let received = receiver.received();
    // Exactly one resource per observed process, and each one's counts are its queue's.
    let mut seen: Vec<&String> = received.processes.keys().collect();
    seen.sort();
    let mut want: Vec<String> = truths.keys().map(u32::to_string).collect();
    want.sort();
    assert_eq!(
        seen,
        want.iter().collect::<Vec<_>>(),
        "one resource per worker"
    );
    for (pid, truth) in &truths {
        let process = &received.processes[&pid.to_string()];
        assert_counts_match(process, truth);
        assert_eq!(
            process
                .resource
                .get("service.instance.id")
                .map(|id| id.ends_with(&format!("/{pid}"))),
            Some(true),
            "{:?}",
            process.resource
        );
        let running = process.int("compozy_temporal_workers_running_total", "");
        let expected = if *pid == pid_a { 0 } else { 1 };
        assert_eq!(running, Some(expected), "workers running in PID {pid}");
    }
    // The namespaced worker was attached through the host's view of its PID.
    assert!(
        log.contains(&format!("attached 5 probes to PID {pid_b}")),
        "{log}"
    );
    let latencies: Vec<f64> = log
        .lines()
        .filter_map(|l| {
            let ms = l.split(" ms after its exec").next()?.rsplit('(').next()?;
            ms.parse().ok()
        })
        .collect();
    assert_eq!(
        latencies.len(),
        3,
        "each worker attached after its exec:\n{log}"
    );
    Ok(latencies)
}

#[test]
fn watch_follows_workers_as_they_come_and_go() -> anyhow::Result<()> {
    let env = Env::require("watch")?;
    let server = DevServer::start(&env)?;

    let latencies = scenario(&env, &server, &[])?;
    eprintln!("attach latency, exec to probes attached (ms): {latencies:?}");
    assert!(
        latencies.iter().all(|ms| *ms < 1000.0),
        "attach latency over one second: {latencies:?}"
    );

    let limited = scenario(&env, &server, &setpriv_keeping(&MANIFEST_CAPABILITIES))?;
    eprintln!("with only {MANIFEST_CAPABILITIES:?}: attach latency (ms): {limited:?}");

    for dropped in MANIFEST_CAPABILITIES {
        let kept: Vec<&str> = MANIFEST_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| *c != dropped)
            .collect();
        let wrapper = setpriv_keeping(&kept);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let (status, stderr) =
            run_observer_via(&env, &wrapper, &["watch", "--duration-secs", "30"])?;
        assert!(!status.success(), "watch ran without {dropped}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "it did not fail fast"
        );
        let name = format!("CAP_{}", dropped.to_uppercase());
        let message = stderr
            .lines()
            .find(|l| l.starts_with("error:"))
            .context("no error line")?;
        assert!(
            message.contains("missing privileges") && message.contains(&name),
            "{stderr}"
        );
    }
    Ok(())
}
