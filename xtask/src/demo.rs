//! The self-contained demo: a dev server, the sample worker, a steady workload, and the observer
//! showing the live metric values, until Ctrl-C; then everything it started is stopped.

use std::{
    os::unix::process::CommandExt,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use anyhow::Context as _;
use e2e::{DevServer, Env, Mix, drive, start_worker};

use crate::{Paths, default_observer_args};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

pub fn run(paths: &Paths, observer_args: &[String]) -> anyhow::Result<()> {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_interrupt as *const () as libc::sighandler_t,
        );
        libc::signal(
            libc::SIGTERM,
            on_interrupt as *const () as libc::sighandler_t,
        );
    }
    let env = Env::require("demo")?;
    eprintln!("demo: starting a Temporal dev server");
    let server = DevServer::start(&env)?;
    let task_queue = "observer-demo";
    let worker = start_worker(&env, &server, task_queue, &[])?;
    eprintln!(
        "demo: sample worker PID {} on {}; attaching temporal-observer",
        worker.pid(),
        server.address
    );
    let mut observer = Command::new(&paths.observer)
        .args(["attach", "--pid", &worker.pid().to_string()])
        .args(if observer_args.is_empty() {
            default_observer_args()
        } else {
            observer_args.to_vec()
        })
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting temporal-observer")?;
    std::thread::sleep(Duration::from_secs(2));
    eprintln!(
        "demo: running a workload every few seconds (logs in {}); Ctrl-C stops everything",
        env.logs.display()
    );
    let mix = Mix {
        complete: 2,
        fail: 1,
        cancel: 1,
        activity_timeout: 1,
        server_timeout: 1,
        continue_as_new: 1,
        continue_as_new_times: 1,
        signal: 1,
        server_timeout_ms: 2000,
        input_bytes: 0,
        ..Mix::default()
    };
    let mut round = 0;
    while !INTERRUPTED.load(Ordering::SeqCst) {
        round += 1;
        match drive(&env, &server, task_queue, &e2e::unique("demo"), &mix) {
            Ok(truth) => eprintln!(
                "demo: round {round}: the server closed {} runs",
                truth.runs.len()
            ),
            Err(e) if INTERRUPTED.load(Ordering::SeqCst) => {
                eprintln!("demo: round {round} interrupted: {e}")
            }
            Err(e) => return Err(e),
        }
        for _ in 0..30 {
            if INTERRUPTED.load(Ordering::SeqCst) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    eprintln!("demo: stopping");
    // SAFETY: kill has no memory preconditions; the pid is our own child.
    unsafe { libc::kill(observer.id() as libc::pid_t, libc::SIGINT) };
    let _ = observer.wait();
    drop(worker);
    drop(server);
    Ok(())
}
