//! The observer dying must not hurt the worker, and must leave nothing in the kernel.

use std::{collections::BTreeSet, time::Duration};

use e2e::{
    DevServer, Driver, Env, GroundTruth, Mix, Observer, RELEASE_BUILD_PROGRAMS, RunStatus,
    accuracy::{as_strs, assert_counts_match, export_to},
    drive,
    otlp::{Receiver, Transport},
    rss_kib, start_worker, unique,
};

/// IDs of the loaded BPF programs that carry one of our names.
fn our_programs() -> anyhow::Result<BTreeSet<u32>> {
    let mut ids = BTreeSet::new();
    for info in aya::programs::loaded_programs() {
        let info = info?;
        if info
            .name_as_str()
            .is_some_and(|n| RELEASE_BUILD_PROGRAMS.contains(&n))
        {
            ids.insert(info.id());
        }
    }
    Ok(ids)
}

#[test]
fn killing_the_observer_mid_load_leaves_the_worker_working_and_the_kernel_clean()
-> anyhow::Result<()> {
    let env = Env::require("faults_sigkill")?;
    let server = DevServer::start(&env)?;
    let task_queue = unique("sigkill");
    let mut worker = start_worker(&env, &server, &task_queue, &[])?;
    let before = our_programs()?;
    let mut observer = Observer::attach(&env, worker.pid(), &["--no-export"])?;
    let loaded: BTreeSet<u32> = our_programs()?.difference(&before).copied().collect();
    assert_eq!(
        loaded.len(),
        RELEASE_BUILD_PROGRAMS.len(),
        "the observer's programs are loaded"
    );

    let mix = Mix {
        complete: 10,
        signal: 3,
        cancel: 3,
        continue_as_new: 2,
        continue_as_new_times: 2,
        ..Mix::default()
    };
    let driver = Driver::spawn(&env, &server, &task_queue, &unique("during"), &mix, None)?;
    std::thread::sleep(Duration::from_millis(1500));
    let status = observer
        .process
        .stop_with(libc::SIGKILL, Duration::from_secs(10))?;
    assert!(!status.success(), "killed");

    // Every run still ends as it should: the worker never noticed.
    let truth = driver.wait()?;
    assert_eq!(truth.runs.len(), 10 + 3 + 3 + 2 * 3);
    for run in &truth.runs {
        let expected = match run.workflow_type.as_str() {
            "CancelWorkflow" => RunStatus::Canceled,
            "ContinueAsNewWorkflow" if run.status == RunStatus::ContinuedAsNew => {
                RunStatus::ContinuedAsNew
            }
            _ => RunStatus::Completed,
        };
        assert_eq!(
            run.status, expected,
            "run {} ({})",
            run.run_id, run.workflow_type
        );
    }
    assert!(worker.is_running(), "the worker must survive its observer");
    let after = drive(
        &env,
        &server,
        &task_queue,
        &unique("after"),
        &Mix {
            complete: 3,
            ..Mix::default()
        },
    )?;
    assert!(after.runs.iter().all(|r| r.status == RunStatus::Completed));

    // The kernel released every program (and with them the uprobes) when the observer died.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = our_programs()?.intersection(&loaded).copied().collect();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "programs {left:?} are still loaded"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

#[test]
fn a_worker_killed_while_observed_is_noticed_and_its_last_values_exported() -> anyhow::Result<()> {
    let env = Env::require("faults_worker_sigkill")?;
    let server = DevServer::start(&env)?;
    let receiver = Receiver::start(Transport::Http)?;
    let task_queue = unique("killed");
    let mut worker = start_worker(&env, &server, &task_queue, &[])?;
    let mut observer = Observer::attach(&env, worker.pid(), &as_strs(&export_to(&receiver)))?;
    let truth = drive(
        &env,
        &server,
        &task_queue,
        &task_queue,
        &Mix {
            complete: 4,
            fail: 1,
            cancel: 1,
            ..Mix::default()
        },
    )?;
    worker.stop_with(libc::SIGKILL, Duration::from_secs(10))?;
    // The observer notices by itself, detaches, exports, and exits cleanly.
    let status = observer.process.wait_exit(Duration::from_secs(15))?;
    let log = std::fs::read_to_string(&observer.process.log)?;
    assert!(status.success(), "observer exited with {status}:\n{log}");
    assert!(log.contains("the worker exited"), "{log}");
    let received = receiver.wait_for(Duration::from_secs(10), "the last values", |r| {
        r.int("compozy_temporal_workers_running_total", "") == Some(0)
    })?;
    assert_counts_match(&received, &truth);
    assert_eq!(
        received.int("temporal_observer_targets_observed", ""),
        Some(0)
    );
    Ok(())
}

#[test]
fn an_otlp_endpoint_down_then_back_gets_exact_cumulative_values() -> anyhow::Result<()> {
    let env = Env::require("faults_endpoint_down")?;
    let server = DevServer::start(&env)?;
    let receiver = Receiver::start(Transport::Http)?;
    let task_queue = unique("down");
    let worker = start_worker(&env, &server, &task_queue, &[])?;
    let observer = Observer::attach(&env, worker.pid(), &as_strs(&export_to(&receiver)))?;
    let mix = Mix {
        complete: 4,
        fail: 1,
        continue_as_new: 1,
        continue_as_new_times: 1,
        ..Mix::default()
    };
    let ends = |truth: &GroundTruth| truth.runs.len() as i64;
    let total_ends = e2e::accuracy::total_ends;
    let before = drive(&env, &server, &task_queue, &unique("before"), &mix)?;
    receiver.wait_for(Duration::from_secs(10), "the first runs' ends", |r| {
        total_ends(r) == ends(&before)
    })?;

    receiver.set_down(true);
    let exports_while_up = receiver.received().exports;
    let rss_before = rss_kib(observer.process.pid());
    let during = drive(&env, &server, &task_queue, &unique("during"), &mix)?;
    // Several export intervals fail meanwhile; memory must not grow with them.
    let mut rss_peak = rss_before;
    for _ in 0..30 {
        rss_peak = rss_peak.max(rss_kib(observer.process.pid()));
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        receiver.received().exports,
        exports_while_up,
        "nothing got through"
    );
    receiver.set_down(false);

    let received = receiver.wait_for(Duration::from_secs(15), "every run's end", |r| {
        total_ends(r) == ends(&before) + ends(&during)
    })?;
    let mut both = before.clone();
    both.runs.extend(during.runs.iter().cloned());
    assert_counts_match(&received, &both);
    let (status, _, log) = observer.stop()?;
    assert!(status.success(), "{log}");
    assert!(
        log.contains("failed") && log.contains("works again"),
        "{log}"
    );
    assert!(
        rss_peak <= rss_before + 8 * 1024,
        "the observer grew from {rss_before} KiB to {rss_peak} KiB while the endpoint was down"
    );
    eprintln!("observer RSS while the endpoint was down: {rss_before} KiB -> peak {rss_peak} KiB");
    Ok(())
}
