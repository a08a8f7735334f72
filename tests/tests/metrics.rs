//! The exported metric set against the Temporal server's own record of the same runs, through a
//! real OTLP receiver, for both transports and under cache pressure.

#[path = "support/replay.rs"]
mod replay;

use replay::assert_replay_equals_export;
use std::time::Duration;

use e2e::{
    DevServer, Env, GroundTruth, Mix, Observer, Worker,
    accuracy::{
        DURATION, ENDS, as_strs, assert_matches_server, expected, export_to, observe,
        observe_late_attach, with,
    },
    drive,
    otlp::{Receiver, Transport},
    parse_events, start_worker, unique,
};

#[test]
fn metrics_over_grpc_equal_the_servers_record() -> anyhow::Result<()> {
    let outcome = observe(
        "metrics_grpc",
        Transport::Grpc,
        &[],
        &Mix::every_end_state(),
    )?;
    assert_matches_server(&outcome);
    assert_replay_equals_export(&outcome)?;
    Ok(())
}

#[test]
fn metrics_over_http_equal_the_servers_record() -> anyhow::Result<()> {
    let outcome = observe(
        "metrics_http",
        Transport::Http,
        &[],
        &Mix::every_end_state(),
    )?;
    assert_matches_server(&outcome);
    assert_replay_equals_export(&outcome)?;
    Ok(())
}

#[test]
fn evictions_from_a_cache_of_one_never_count_twice() -> anyhow::Result<()> {
    let mix = Mix {
        complete: 8,
        fail: 2,
        cancel: 2,
        activity_timeout: 2,
        server_timeout: 0,
        continue_as_new: 3,
        continue_as_new_times: 2,
        signal: 4,
        server_timeout_ms: 2000,
        input_bytes: 0,
        ..Mix::default()
    };
    let outcome = observe(
        "metrics_evictions",
        Transport::Http,
        &["--max-cached-workflows", "1"],
        &mix,
    )?;
    // The cache really was too small: runs were evicted for room and replayed from history.
    let cache_full = outcome
        .lines
        .iter()
        .filter(|l| l["probe"] == "eviction" && l["reason_name"] == "CacheFull")
        .count();
    let replays = outcome
        .lines
        .iter()
        .filter(|l| l["probe"] == "activation" && l["replaying"] == true && l.get("init").is_some())
        .count();
    assert!(
        cache_full > 0 && replays > 0,
        "no cache pressure: {cache_full} CacheFull evictions, {replays} replays"
    );
    assert_matches_server(&outcome);
    Ok(())
}

#[test]
fn runs_under_way_before_attaching_count_their_ends_but_no_start() -> anyhow::Result<()> {
    let env = Env::require("metrics_late_attach")?;
    observe_late_attach(&env, &Worker::Rust(env.worker.clone()), "late", &[])?;
    Ok(())
}

#[test]
fn a_worker_restarted_in_its_process_goes_down_and_up_and_counts_stay_exact() -> anyhow::Result<()>
{
    let env = Env::require("metrics_restart")?;
    let server = DevServer::start(&env)?;
    let receiver = Receiver::start(Transport::Grpc)?;
    let task_queue = unique("restart");
    let mut worker = start_worker(&env, &server, &task_queue, &[])?;
    let args = with(
        export_to(&receiver),
        &[
            "--configured-workers",
            "1",
            "--print-updates",
            "--format",
            "json",
        ],
    );
    let observer = Observer::attach(&env, worker.pid(), &as_strs(&args))?;
    let mix = Mix {
        complete: 2,
        fail: 1,
        continue_as_new: 1,
        continue_as_new_times: 1,
        ..Mix::default()
    };
    let first = drive(&env, &server, &task_queue, &unique("first"), &mix)?;
    // SAFETY: kill has no memory preconditions; the pid is our own child.
    unsafe { libc::kill(worker.pid() as libc::pid_t, libc::SIGHUP) };
    worker.wait_for_log("restarting the worker", Duration::from_secs(10))?;
    let log_has_two_starts = || {
        std::fs::read_to_string(&worker.log)
            .is_ok_and(|t| t.matches("polling task queue").count() == 2)
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !log_has_two_starts() {
        assert!(
            std::time::Instant::now() < deadline,
            "the worker did not restart"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let second = drive(&env, &server, &task_queue, &unique("second"), &mix)?;
    let (status, stdout, log) = observer.stop()?;
    assert!(status.success(), "{log}");

    let deltas: Vec<i64> = parse_events(&stdout)?
        .iter()
        .filter(|l| l["update"] == "workers_running")
        .filter_map(|l| l["delta"].as_i64())
        .collect();
    assert_eq!(
        deltas,
        vec![1, -1, 1],
        "workers running: 1, then 0 at the shutdown, then 1 again"
    );
    let received = receiver.received();
    assert_eq!(
        received.int("compozy_temporal_workers_running_total", ""),
        Some(1)
    );
    assert_eq!(
        received.int("compozy_temporal_workers_configured_total", ""),
        Some(1)
    );
    let runs: Vec<_> = first.runs.iter().chain(&second.runs).cloned().collect();
    let both = GroundTruth { runs, ..first };
    for (metric, per_type) in expected(&both) {
        for (ty, count) in per_type {
            assert_eq!(
                received.int(metric, &ty),
                Some(count),
                "{metric}{{workflow_type={ty}}}"
            );
        }
    }
    Ok(())
}

#[test]
fn prometheus_scrapes_read_the_servers_record_too() -> anyhow::Result<()> {
    let env = Env::require("metrics_prometheus")?;
    let server = DevServer::start(&env)?;
    let task_queue = unique("prometheus");
    let worker = start_worker(&env, &server, &task_queue, &[])?;
    let addr = format!("127.0.0.1:{}", e2e::free_port()?);
    let observer = Observer::attach(
        &env,
        worker.pid(),
        &["--no-export", "--prometheus-listen", &addr],
    )?;
    let mix = Mix {
        complete: 2,
        fail: 1,
        cancel: 1,
        activity_timeout: 1,
        ..Mix::default()
    };
    let truth = drive(&env, &server, &task_queue, &task_queue, &mix)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let series = loop {
        let series = e2e::scrape_prometheus(&addr)?;
        let ends: f64 = series
            .iter()
            .filter(|(k, _)| ENDS.iter().any(|m| k.starts_with(&format!("{m}{{"))))
            .map(|(_, v)| v)
            .sum();
        if ends as usize == truth.runs.len() || std::time::Instant::now() > deadline {
            break series;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    for (metric, per_type) in expected(&truth) {
        for (ty, count) in per_type {
            let key = format!("{metric}{{workflow_type=\"{ty}\"}}");
            assert_eq!(
                series.get(&key).copied(),
                Some(count as f64),
                "{key} in {series:#?}"
            );
        }
    }
    let count = series.get(&format!(
        "{DURATION}_count{{workflow_type=\"CompleteWorkflow\"}}"
    ));
    assert_eq!(count.copied(), Some(2.0), "{series:#?}");
    assert!(
        series.keys().all(|k| !k.contains("otel_scope")),
        "only workflow_type labels: {series:#?}"
    );
    let (status, _, log) = observer.stop()?;
    assert!(status.success(), "{log}");
    Ok(())
}
