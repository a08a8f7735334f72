//! The observer dying must not hurt the worker, and must leave nothing in the kernel.

use std::{collections::BTreeSet, time::Duration};

use e2e::{DevServer, Driver, Env, Mix, Observer, RunStatus, drive, start_worker, unique};

/// Names of the programs `observer-ebpf` loads for the default release build, as the kernel
/// keeps them (cut to 15 bytes).
const OUR_PROGRAMS: [&str; 7] = [
    "activation_slot",
    "activation_retu",
    "completion",
    "eviction",
    "task",
    "worker_start",
    "worker_shutdown",
];

/// IDs of the loaded BPF programs that carry one of our names.
fn our_programs() -> anyhow::Result<BTreeSet<u32>> {
    let mut ids = BTreeSet::new();
    for info in aya::programs::loaded_programs() {
        let info = info?;
        if info
            .name_as_str()
            .is_some_and(|n| OUR_PROGRAMS.contains(&n))
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
        OUR_PROGRAMS.len(),
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
