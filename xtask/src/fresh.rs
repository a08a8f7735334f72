//! `cargo xtask fresh-check`: the README's two commands on a machine that has nothing else.
//!
//! A machine a user starts from is Debian 12 with rustup's toolchains and a C linker. This
//! builds exactly that as a chroot: a `--variant=apt` bookworm root from `mmdebstrap`, reaching
//! the same package registry as this machine (its apt sources and apt.conf.d, its extra CA
//! certificates), rustup's toolchains bind-mounted read-only, an empty cargo home, and a clean
//! clone of HEAD. Inside it, in a mount namespace of its own, it runs the demo as a newcomer runs
//! it (`cargo xtask run` in tmux: live values within its first minute, then Ctrl-C must stop
//! everything) and then `cargo xtask test`. Each step is timed; a failing step ends the check
//! with its last lines.
//!
//! The root shares this machine's PID namespace and kernel, as a fresh VM of the same kind would:
//! the probes report the host's PIDs, so a PID namespace would misattribute them.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};

use crate::{paths, sh};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to build the root (removed first if it exists).
    #[arg(long, default_value = "/var/tmp/temporal-observer-fresh")]
    root: PathBuf,
    /// How long the demo has, once it started, to show non-zero metric values.
    #[arg(long, default_value_t = 60)]
    demo_secs: u64,
    /// Skip the test command (check set-up and the demo only).
    #[arg(long)]
    no_test: bool,
    /// Keep the root afterwards (to look into it); it is removed otherwise.
    #[arg(long)]
    keep: bool,
}

/// What a user's machine has before the README's commands: the C linker every Rust build needs
/// (rustup's installer asks for one) and TLS roots. tmux is the check's own tool, not the
/// product's: it plays the newcomer's terminal.
const BASE_PACKAGES: &[&str] = &["ca-certificates", "gcc", "libc6-dev", "tmux"];

/// Environment of this machine that points its tools at its registries; passed into the root
/// as a user's shell on this kind of machine has it.
const MACHINE_ENV: &[&str] = &[
    "PIP_CERT",
    "PIP_DEFAULT_TIMEOUT",
    "PIP_DISABLE_PIP_VERSION_CHECK",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "NODE_EXTRA_CA_CERTS",
    "RUSTUP_AUTO_INSTALL",
];

/// The rustup proxies a user's `~/.cargo/bin` holds.
const RUSTUP_PROXIES: &[&str] = &[
    "rustup",
    "cargo",
    "rustc",
    "rustdoc",
    "rustfmt",
    "cargo-fmt",
    "cargo-clippy",
    "clippy-driver",
];

/// Written into every root this check makes: only a directory holding it is ever removed.
const MARKER: &str = ".temporal-observer-fresh-root";

/// Where the repository is cloned inside the root.
const CHECKOUT: &str = "/root/temporal-observer";
const TMUX_SOCKET: &str = "/tmp/fresh-check.tmux";
const DEMO_LOG: &str = "/tmp/demo-pane.log";

struct Step {
    name: &'static str,
    took: Duration,
    result: anyhow::Result<()>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(
        is_root(),
        "fresh-check builds a chroot and loads BPF programs in it: run it as root"
    );
    let root = &args.root;
    let mut steps: Vec<Step> = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> anyhow::Result<()>| {
        eprintln!("fresh-check: == {name}");
        let started = Instant::now();
        let result = f();
        let took = started.elapsed();
        match &result {
            Ok(()) => eprintln!("fresh-check: {name}: ok ({})", minutes(took)),
            Err(e) => eprintln!("fresh-check: {name}: FAILED ({}): {e:#}", minutes(took)),
        }
        let ok = result.is_ok();
        steps.push(Step { name, took, result });
        ok
    };
    let ok = step("host tools (mmdebstrap)", &mut host_tools)
        && step("clean Debian 12 root", &mut || make_root(root))
        && step("clean clone of HEAD", &mut || clone_into(root))
        && step(
            "README main command: the demo (`cargo xtask run`)",
            &mut || demo(root, Duration::from_secs(args.demo_secs)),
        )
        && (args.no_test
            || step("README test command (`cargo xtask test`)", &mut || {
                in_root(root, "cargo xtask test", &root.join("tmp/test.log"))
            }));
    let leftovers = stop_processes_in(root);
    eprintln!("\nfresh-check: summary ({})", root.display());
    for s in &steps {
        eprintln!(
            "  {:<55} {:>9}  {}",
            s.name,
            minutes(s.took),
            if s.result.is_ok() { "ok" } else { "FAILED" }
        );
    }
    if !args.keep && ok {
        std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    if let Some(failed) = steps.iter().find(|s| s.result.is_err()) {
        bail!(
            "step `{}` failed; the root is kept at {} (logs in its /tmp)",
            failed.name,
            root.display()
        );
    }
    ensure!(
        leftovers.is_empty(),
        "processes were still running in the root after the last step: {}",
        leftovers.join(", ")
    );
    eprintln!("fresh-check: both README commands passed from a clean root");
    Ok(())
}

fn minutes(d: Duration) -> String {
    format!("{:.1} min", d.as_secs_f64() / 60.0)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn host_tools() -> anyhow::Result<()> {
    let installed = Command::new("mmdebstrap")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !installed {
        sh(Command::new("apt-get").args(["update", "-qq"]))?;
        sh(Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "mmdebstrap",
            ]))?;
    }
    Ok(())
}

/// This machine's apt sources: the deb822 file(s) and the one-line list, whichever exist.
fn apt_sources() -> Vec<PathBuf> {
    let mut sources: Vec<PathBuf> = std::fs::read_dir("/etc/apt/sources.list.d")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "sources" || e == "list"))
        .collect();
    let list = Path::new("/etc/apt/sources.list");
    if std::fs::read_to_string(list).is_ok_and(|t| t.lines().any(|l| l.starts_with("deb"))) {
        sources.push(list.to_path_buf());
    }
    sources.sort();
    sources
}

/// A bookworm root (a directory, or a tarball where `target` ends in `.tar`) of mmdebstrap's
/// `variant` plus `packages`, from the same package registry as this machine (its apt sources
/// and apt.conf.d).
pub fn mmdebstrap(variant: &str, packages: &[&str], target: &Path) -> anyhow::Result<()> {
    let sources = apt_sources();
    ensure!(!sources.is_empty(), "this machine has no apt sources");
    let mut command = Command::new("mmdebstrap");
    command.args([&format!("--variant={variant}"), "--mode=root", "--quiet"]);
    if !packages.is_empty() {
        command.arg(format!("--include={}", packages.join(",")));
    }
    for option in std::fs::read_dir("/etc/apt/apt.conf.d")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        command.arg(format!("--aptopt={}", option.path().display()));
    }
    command.arg("bookworm").arg(target);
    command.args(&sources);
    sh(&mut command)
}

/// A clean root at `root` (an old one this check made is stopped and removed first), marked as
/// made here.
pub fn make_clean_root(root: &Path, variant: &str, packages: &[&str]) -> anyhow::Result<()> {
    if root.exists() {
        let leftovers = stop_processes_in(root);
        if !leftovers.is_empty() {
            eprintln!(
                "xtask: stopped processes left in the old root: {}",
                leftovers.join(", ")
            );
        }
        remove_root(root)?;
    }
    if let Some(parent) = root.parent() {
        std::fs::create_dir_all(parent)?;
    }
    mmdebstrap(variant, packages, root)?;
    std::fs::write(root.join(MARKER), "made by cargo xtask\n")?;
    Ok(())
}

fn make_root(root: &Path) -> anyhow::Result<()> {
    make_clean_root(root, "apt", BASE_PACKAGES)?;
    // The CA certificates this machine adds (a TLS-inspecting proxy in front of the registries).
    let extra = Path::new("/usr/local/share/ca-certificates");
    let target = root.join("usr/local/share/ca-certificates");
    std::fs::create_dir_all(&target)?;
    for cert in std::fs::read_dir(extra)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
    {
        std::fs::copy(cert.path(), target.join(cert.file_name()))?;
    }
    sh(Command::new("chroot")
        .arg(root)
        .args(["update-ca-certificates", "--fresh"])
        .stdout(Stdio::null()))?;
    std::fs::copy("/etc/resolv.conf", root.join("etc/resolv.conf"))
        .context("copying /etc/resolv.conf")?;
    // rustup as a user has it: the proxies in an otherwise empty ~/.cargo, the toolchains
    // mounted read-only over ~/.rustup when commands run.
    let cargo_bin = root.join("root/.cargo/bin");
    std::fs::create_dir_all(&cargo_bin)?;
    std::fs::create_dir_all(root.join("root/.rustup"))?;
    let rustup = home().join(".cargo/bin/rustup");
    ensure!(
        rustup.is_file(),
        "{} is missing: the check gives the root this machine's rustup",
        rustup.display()
    );
    for proxy in RUSTUP_PROXIES {
        std::fs::copy(&rustup, cargo_bin.join(proxy))
            .with_context(|| format!("copying rustup as {proxy}"))?;
    }
    Ok(())
}

/// Removes a root this check made, and nothing else.
pub fn remove_root(root: &Path) -> anyhow::Result<()> {
    ensure!(
        root.join(MARKER).is_file(),
        "{} exists but was not made by cargo xtask (no {MARKER} in it); remove it yourself or \
         choose another --root",
        root.display()
    );
    std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn rustup_home() -> PathBuf {
    std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".rustup"))
}

fn clone_into(root: &Path) -> anyhow::Result<()> {
    let repo = paths().root;
    let head = Command::new("git")
        .current_dir(&repo)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .context("running git")?;
    let dirty = Command::new("git")
        .current_dir(&repo)
        .args(["status", "--porcelain", "--untracked-files=no"])
        .output()
        .context("running git")?;
    if !dirty.stdout.is_empty() {
        eprintln!(
            "fresh-check: note: uncommitted changes are not part of the check (it clones HEAD)"
        );
    }
    eprintln!(
        "fresh-check: cloning {} at {}",
        repo.display(),
        String::from_utf8_lossy(&head.stdout).trim()
    );
    sh(Command::new("git")
        .args(["clone", "--quiet", "--no-local", "--no-hardlinks"])
        .arg(&repo)
        .arg(root.join(CHECKOUT.trim_start_matches('/'))))
}

/// A shell script that mounts what a booted machine has into the root, then runs `command` in
/// it, in the checkout, with a user's login environment. Run it in a new mount namespace.
fn script(root: &Path, command: &str) -> String {
    let r = shell_quote(&root.to_string_lossy());
    let rustup = shell_quote(&rustup_home().to_string_lossy());
    let mut env = vec![
        "HOME=/root".to_string(),
        "USER=root".to_string(),
        "LANG=C.UTF-8".to_string(),
        "TERM=xterm-256color".to_string(),
        "PATH=/root/.cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
            .to_string(),
    ];
    for var in MACHINE_ENV {
        if let Ok(value) = std::env::var(var) {
            env.push(format!("{var}={value}"));
        }
    }
    let env: Vec<String> = env.iter().map(|e| shell_quote(e)).collect();
    format!(
        "set -eu
# The root must be a mount point, as / is on a machine: `unshare --mount` in the tests changes
# the propagation of /, which fails on a plain directory.
mount --bind {r} {r}
mount -t proc proc {r}/proc
mount -t sysfs sysfs {r}/sys
mount -t bpf bpf {r}/sys/fs/bpf
mount --rbind /dev {r}/dev
mount --bind {rustup} {r}/root/.rustup
mount -o remount,bind,ro {r}/root/.rustup
exec chroot {r} /usr/bin/env -i {env} /bin/bash -c {cmd}",
        env = env.join(" "),
        cmd = shell_quote(&format!("cd {CHECKOUT} && {command}")),
    )
}

pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs `command` in the root until it ends; its output goes to `log` (and the last lines into
/// the error when it fails).
fn in_root(root: &Path, command: &str, log: &Path) -> anyhow::Result<()> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    eprintln!("fresh-check: $ {command}   (output in {})", log.display());
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c"])
        .arg(script(root, command))
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .status()
        .context("running unshare")?;
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        bail!(
            "`{command}` failed ({status}); its last lines:\n{}",
            tail(&text, 40)
        );
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// tmux, talking to the server inside the root over its socket there.
fn tmux(root: &Path) -> Command {
    let mut command = Command::new("chroot");
    command.arg(root).args(["tmux", "-S", TMUX_SOCKET]);
    command
}

/// The demo as a newcomer runs it: `cargo xtask run` in a terminal. It first sets up and builds
/// (no deadline); once the demo itself starts, it must show non-zero values within `within`;
/// then Ctrl-C must stop it and everything it started.
fn demo(root: &Path, within: Duration) -> anyhow::Result<()> {
    let pane_log = root.join(DEMO_LOG.trim_start_matches('/'));
    let _ = std::fs::remove_file(&pane_log);
    let start = format!(
        "tmux -S {TMUX_SOCKET} new-session -d -s demo -x 160 -y 48 'cargo xtask run; sleep 2' \
         && tmux -S {TMUX_SOCKET} pipe-pane -t demo -o 'cat >> {DEMO_LOG}'"
    );
    let status = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "bash", "-c"])
        .arg(script(root, &start))
        .status()
        .context("starting tmux in the root")?;
    ensure!(
        status.success(),
        "starting the demo in tmux failed ({status})"
    );
    eprintln!(
        "fresh-check: the demo runs in tmux (attach: chroot {} tmux -S {TMUX_SOCKET} attach); \
         set-up and builds come first",
        root.display()
    );
    let logged = || std::fs::read_to_string(&pane_log).unwrap_or_default();
    let alive = || {
        tmux(root)
            .args(["has-session", "-t", "demo"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    // Set-up and builds: generous, but bounded.
    let setup_deadline = Instant::now() + Duration::from_secs(90 * 60);
    let mut last_report = Instant::now();
    while !logged().contains("demo: starting a Temporal dev server") {
        if !alive() {
            bail!(
                "the demo ended before it started; its terminal showed:\n{}",
                tail(&strip_ansi(&logged()), 40)
            );
        }
        ensure!(
            Instant::now() < setup_deadline,
            "the demo did not start within 90 minutes; last output:\n{}",
            tail(&strip_ansi(&logged()), 40)
        );
        if last_report.elapsed() > Duration::from_secs(120) {
            last_report = Instant::now();
            let text = strip_ansi(&logged());
            let last = text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("");
            eprintln!("fresh-check: still setting up: {}", last.trim_end());
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let started = Instant::now();
    eprintln!("fresh-check: the demo started; waiting up to {within:?} for live values");
    let (shown, screen) = loop {
        let captured = tmux(root)
            .args(["capture-pane", "-p", "-t", "demo"])
            .output()
            .context("tmux capture-pane")?;
        let screen = String::from_utf8_lossy(&captured.stdout).into_owned();
        if let Some(values) = live_values(&screen) {
            break (values, screen);
        }
        ensure!(
            alive(),
            "the demo exited; its terminal showed:\n{}",
            tail(&strip_ansi(&logged()), 40)
        );
        if started.elapsed() > within {
            bail!(
                "the demo showed no non-zero metric values within {within:?}; the screen:\n{screen}"
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    eprintln!(
        "fresh-check: live values after {:.0} s: {shown}; the screen:\n{screen}",
        started.elapsed().as_secs_f64()
    );
    sh(tmux(root).args(["send-keys", "-t", "demo", "C-c"]))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    // The pane's command ends with `sleep 2`; what matters is that the demo's children are gone.
    loop {
        let running = demo_processes(root);
        if running.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "60 s after Ctrl-C these demo processes still run: {}",
            running.join(", ")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let text = strip_ansi(&logged());
    ensure!(
        text.contains("demo: stopping"),
        "the demo did not say it stopped; its terminal showed:\n{}",
        tail(&text, 20)
    );
    eprintln!("fresh-check: Ctrl-C stopped the demo, the observer, the worker and the server");
    // The terminal itself (tmux and its pipe-pane) is the check's, not the demo's.
    let _ = tmux(root).args(["kill-server"]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_in(root).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Processes of the demo still running in the root (the dev server, the worker, the observer,
/// the driver, xtask), as `name(pid)`.
fn demo_processes(root: &Path) -> Vec<String> {
    processes_in(root)
        .into_iter()
        .filter(|(_, comm)| {
            [
                "temporal",
                "sample-worker",
                "temporal-observ",
                "workload-driver",
                "xtask",
            ]
            .contains(&comm.as_str())
        })
        .map(|(pid, comm)| format!("{comm}({pid})"))
        .collect()
}

/// A table row `TYPE started completed …` with non-zero counts, and the workers line: what a
/// newcomer must see. Returns a short description of what was seen.
fn live_values(screen: &str) -> Option<String> {
    let running = screen
        .lines()
        .find_map(|l| l.trim().strip_prefix("workers running:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<i64>().ok())?;
    let (started, ended) = screen
        .lines()
        .filter(|l| !l.starts_with("workflow_type"))
        .filter_map(|l| {
            let numbers: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .take(6)
                .map(str::parse)
                .collect::<Result<_, _>>()
                .ok()?;
            (numbers.len() == 6).then(|| (numbers[0], numbers[1..].iter().sum::<u64>()))
        })
        .fold((0, 0), |(s, e), (rs, re)| (s + rs, e + re));
    (running > 0 && started > 0 && ended > 0)
        .then(|| format!("{started} runs started, {ended} ended, {running} worker(s) running"))
}

fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        // A carriage return redraws the line (cargo's progress bar): keep each drawing.
        out.push(if c == '\r' { '\n' } else { c });
    }
    out
}

/// Every process whose root directory is `root`: (pid, comm).
fn processes_in(root: &Path) -> Vec<(u32, String)> {
    let Ok(root) = root.canonicalize() else {
        return Vec::new();
    };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|r| r == root))
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect()
}

/// Stops everything still running in the root and waits until it is gone; returns what had to
/// be stopped.
pub fn stop_processes_in(root: &Path) -> Vec<String> {
    let found = processes_in(root);
    for (pid, _) in &found {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_in(root).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    found
        .into_iter()
        .map(|(pid, comm)| format!("{comm}({pid})"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "workflow_type                    started   completed      failed    canceled   timed_out cont_as_new    mean_dur_s
CompleteWorkflow                       2           2           0           0           0           0         1.010
FailWorkflow                           1           0           1           0           0           0         0.012
workers running: 1   workers configured: 1
";

    #[test]
    fn the_demo_table_counts_as_live_only_with_runs_and_a_worker() {
        assert_eq!(
            live_values(TABLE).as_deref(),
            Some("3 runs started, 3 ended, 1 worker(s) running")
        );
        let empty = "workflow_type  started completed failed canceled timed_out cont_as_new mean_dur_s\nworkers running: 1   workers configured: 1\n";
        assert_eq!(live_values(empty), None);
        assert_eq!(
            live_values(&TABLE.replace("running: 1", "running: 0")),
            None
        );
        assert_eq!(live_values("cargo build ..."), None);
    }

    #[test]
    fn escapes_are_stripped() {
        assert_eq!(strip_ansi("\x1b[2J\x1b[Hworkers\n"), "workers\n");
        assert_eq!(strip_ansi("a 1/3\rb 2/3\n"), "a 1/3\nb 2/3\n");
    }

    #[test]
    fn quoting_survives_single_quotes() {
        assert_eq!(shell_quote("a'b"), r"'a'\''b'");
    }
}
