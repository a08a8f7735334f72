//! `cargo xtask dist`: what a user installs without a Rust toolchain, made from this checkout's
//! release build: a versioned bundle, a Debian package and a container image (built without a
//! daemon or a registry). `--check` then proves each one where a user would run it: the bundle's
//! binary in a Debian 12 root that has nothing but the C library, the package installed with
//! `apt install ./….deb` in a clean Debian 12 root and attached from there to the sample worker,
//! and the image run as the DaemonSet runs it; each observation is checked against the
//! Temporal server's own record.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail, ensure};
use e2e::{
    DevServer, Env, Mix, Observer, Worker,
    accuracy::{assert_counts_match, assert_matches_server, every_run_ended, observe_worker},
    drive,
    otlp::{Receiver, Transport},
    run_observer_via, start_worker_binary, unique,
};
use sha2::{Digest as _, Sha256};

use crate::{cargo, fresh, paths, setup, sh};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Then install and run each artifact and check what it observes against the server.
    #[arg(long)]
    check: bool,
}

const TARGET: &str = "x86_64-linux";
/// The image's base: the C library and libgcc_s the binary links (`objdump -p` lists libc,
/// libm and libgcc_s), nothing else; the Dockerfile makes the same root from the same packages.
const BASE_PACKAGES: &[&str] = &["libc6", "libgcc-s1"];
/// The capabilities `deploy/kubernetes/daemonset.yaml` adds; every other one is dropped.
const MANIFEST_CAPABILITIES: [&str; 2] = ["CAP_SYS_ADMIN", "CAP_SYS_PTRACE"];

/// What `dist` made, under `target/dist/`.
struct Artifacts {
    version: String,
    bundle: PathBuf,
    deb: PathBuf,
    image: String,
    image_archive: PathBuf,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    setup::run()?;
    setup::dist_tools()?;
    crate::build()?;
    let out = paths().root.join("target/dist");
    std::fs::create_dir_all(&out)?;
    let artifacts = make(&out)?;
    eprintln!("\nxtask: dist: made in {}", out.display());
    for path in [&artifacts.bundle, &artifacts.deb, &artifacts.image_archive] {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        eprintln!(
            "  {:<55} {:>6.1} MiB",
            file_name(path),
            size as f64 / (1 << 20) as f64
        );
    }
    eprintln!("  image {}", artifacts.image);
    if args.check {
        check(&out, &artifacts)?;
        eprintln!("xtask: dist --check: the bundle, the package and the image all passed");
    }
    Ok(())
}

fn make(out: &Path) -> anyhow::Result<Artifacts> {
    let p = paths();
    let binary = &p.observer;
    let version = version_of(binary)?;
    ensure!(
        version == env!("CARGO_PKG_VERSION"),
        "{} says version {version}, the workspace is {}: rebuild it",
        binary.display(),
        env!("CARGO_PKG_VERSION")
    );
    let long_version = output(Command::new(binary).arg("--version"))?;
    let changes = output(Command::new("git").current_dir(&p.root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))?;
    if !changes.trim().is_empty() {
        eprintln!(
            "xtask: dist: warning: the checkout has uncommitted changes; the binary names its \
             commit all the same (commit them before making a release)"
        );
    }
    let floor = glibc_floor(&std::fs::read(binary)?)?;
    eprintln!(
        "xtask: dist: {} needs glibc {}.{} or newer",
        long_version.trim(),
        floor.0,
        floor.1
    );
    licenses(&out.join("THIRD-PARTY-LICENSES.txt"))?;
    manual_page(binary, &version, &out.join("temporal-observer.1"))?;
    let bundle = bundle(out, binary, &version, long_version.trim(), floor)?;
    let deb = deb(out, &version)?;
    let (image, image_archive) = image(out, binary, &version)?;
    Ok(Artifacts {
        version,
        bundle,
        deb,
        image,
        image_archive,
    })
}

/// The version `-V` prints (`temporal-observer 0.1.0`).
fn version_of(binary: &Path) -> anyhow::Result<String> {
    let text = output(Command::new(binary).arg("-V"))?;
    text.trim()
        .strip_prefix("temporal-observer ")
        .map(str::to_string)
        .with_context(|| format!("unexpected -V output: {text:?}"))
}

/// The newest `GLIBC_x.y` symbol version the binary requires: the oldest glibc it runs on.
pub fn glibc_floor(data: &[u8]) -> anyhow::Result<(u32, u32)> {
    use object::read::elf::{ElfFile64, FileHeader as _};
    let elf = ElfFile64::<object::Endianness>::parse(data).context("not an ELF64 file")?;
    let endian = elf.endian();
    let sections = elf.elf_header().sections(endian, data)?;
    let mut floor: Option<(u32, u32)> = None;
    if let Some((mut needs, link)) = sections.gnu_verneed(endian, data)? {
        let strings = sections.strings(endian, data, link)?;
        while let Some((_, mut auxes)) = needs.next()? {
            while let Some(aux) = auxes.next()? {
                let name = aux.name(endian, strings)?;
                let Some(version) = std::str::from_utf8(name)
                    .ok()
                    .and_then(|n| n.strip_prefix("GLIBC_"))
                else {
                    continue;
                };
                let mut parts = version.split('.').map(str::parse::<u32>);
                if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
                    floor = floor.max(Some((major, minor)));
                }
            }
        }
    }
    floor.context("the binary requires no GLIBC_ symbol version: is it linked against glibc?")
}

/// The licenses of every crate the binary links, from the dependency graphs (cargo-about): the
/// user-space program's and the eBPF programs' (their object is embedded in the binary).
fn licenses(to: &Path) -> anyhow::Result<()> {
    let p = paths();
    let config = p.root.join("xtask/dist/about.toml");
    let template = p.root.join("xtask/dist/about.hbs");
    let mut text = String::new();
    for manifest in ["observer/Cargo.toml", "observer-ebpf/Cargo.toml"] {
        let part = output(
            cargo()
                .current_dir(&p.root)
                .args(["about", "generate", "--locked", "--offline", "--fail"])
                .arg("-c")
                .arg(&config)
                .args(["-m", manifest])
                .arg(&template),
        )
        .with_context(|| format!("cargo about for {manifest}"))?;
        writeln!(text, "[{manifest}]\n\n{part}")?;
    }
    std::fs::write(to, text)?;
    Ok(())
}

/// A manual page from `--help` (help2man), for the package.
fn manual_page(binary: &Path, version: &str, to: &Path) -> anyhow::Result<()> {
    let page = output(
        Command::new("help2man")
            .args(["--no-info", "--name", "eBPF metrics for Temporal workers"])
            .args(["--version-string", version])
            .arg(binary),
    )?;
    std::fs::write(to, page)?;
    Ok(())
}

/// `temporal-observer-VERSION-x86_64-linux.tar.gz` and its `.sha256`: the binary, the
/// deployment files, the licenses and a README of its own.
fn bundle(
    out: &Path,
    binary: &Path,
    version: &str,
    long_version: &str,
    floor: (u32, u32),
) -> anyhow::Result<PathBuf> {
    let root = paths().root;
    let name = format!("temporal-observer-{version}-{TARGET}");
    let stage = out.join(&name);
    if stage.exists() {
        std::fs::remove_dir_all(&stage)?;
    }
    let copy = |from: &Path, to: &str| -> anyhow::Result<()> {
        let to = stage.join(to);
        std::fs::create_dir_all(to.parent().context("no parent")?)?;
        std::fs::copy(from, &to)
            .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        Ok(())
    };
    copy(binary, "temporal-observer")?;
    copy(&root.join("LICENSE"), "LICENSE")?;
    copy(
        &out.join("THIRD-PARTY-LICENSES.txt"),
        "THIRD-PARTY-LICENSES.txt",
    )?;
    for file in [
        "deploy/kubernetes/daemonset.yaml",
        "deploy/kubernetes/configmap.yaml",
        "deploy/systemd/temporal-observer.service",
        "deploy/systemd/temporal-observer.default",
        "deploy/grafana/temporal-observer.json",
        "deploy/prometheus/alerts.yaml",
    ] {
        copy(&root.join(file), file)?;
    }
    let readme = std::fs::read_to_string(root.join("README.md"))?;
    let install =
        section(&readme, "## Install").context("README.md has no `## Install` section")?;
    std::fs::write(
        stage.join("README.md"),
        format!(
            "# temporal-observer {version} for {TARGET}\n\n`{long_version}`. The binary is \
             dynamically linked to glibc {}.{} or newer (Debian 12, Ubuntu 22.04, RHEL 9 and \
             later) and libgcc_s; it needs nothing else. It runs as root or with CAP_SYS_ADMIN \
             and CAP_SYS_PTRACE, on a kernel with BTF and the BPF ring buffer (5.8 or newer; \
             tested on 6.18).\n\n{install}\nThe full \
             documentation: https://github.com/compozy/temporal-observer\n",
            floor.0, floor.1
        ),
    )?;
    let tarball = out.join(format!("{name}.tar.gz"));
    // Reproducible: sorted names, one owner, the commit's time, gzip without a timestamp.
    sh(Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--mtime=@{}", source_date_epoch()?))
        .args(["-I", "gzip -n -9", "-cf"])
        .arg(&tarball)
        .arg("-C")
        .arg(out)
        .arg(&name))?;
    let digest = Sha256::digest(std::fs::read(&tarball)?);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(
        out.join(format!("{name}.tar.gz.sha256")),
        format!("{hex}  {name}.tar.gz\n"),
    )?;
    Ok(tarball)
}

/// The text of the Markdown section that starts with `heading`, up to the next heading of its
/// level or higher.
fn section<'a>(text: &'a str, heading: &str) -> Option<&'a str> {
    let start = text.find(&format!("\n{heading}\n"))? + 1;
    let level = heading.chars().take_while(|c| *c == '#').count();
    let body_start = start + heading.len() + 1;
    let end = text[body_start..]
        .lines()
        .scan(body_start, |offset, line| {
            let at = *offset;
            *offset += line.len() + 1;
            Some((at, line))
        })
        .find(|(_, line)| {
            let hashes = line.chars().take_while(|c| *c == '#').count();
            hashes > 0 && hashes <= level && line[hashes..].starts_with(' ')
        })
        .map_or(text.len(), |(at, _)| at);
    Some(&text[start..end])
}

fn source_date_epoch() -> anyhow::Result<String> {
    if let Ok(epoch) = std::env::var("SOURCE_DATE_EPOCH") {
        return Ok(epoch);
    }
    Ok(output(
        Command::new("git")
            .current_dir(paths().root)
            .args(["log", "-1", "--format=%ct"]),
    )?
    .trim()
    .to_string())
}

/// The Debian package (cargo-deb, from `[package.metadata.deb]`), lintian-clean.
fn deb(out: &Path, version: &str) -> anyhow::Result<PathBuf> {
    let root = paths().root;
    let changelog = std::fs::read_to_string(root.join("deploy/debian/changelog"))?;
    ensure!(
        changelog.starts_with(&format!("temporal-observer ({version}-1)")),
        "deploy/debian/changelog's first entry is not for {version}-1: add one"
    );
    let deb = out.join(format!("temporal-observer_{version}-1_amd64.deb"));
    sh(cargo().current_dir(&root).args([
        "deb",
        "-p",
        "observer",
        "--no-build",
        "--locked",
        "-o",
        &deb.to_string_lossy(),
    ]))?;
    let lintian = Command::new("lintian")
        .args(["--fail-on", "error,warning"])
        .arg(&deb)
        .output()
        .context("running lintian")?;
    let report: String = String::from_utf8_lossy(&lintian.stdout)
        .lines()
        .chain(String::from_utf8_lossy(&lintian.stderr).lines())
        .filter(|l| !l.starts_with("running with root privileges"))
        .map(|l| format!("{l}\n"))
        .collect();
    ensure!(
        lintian.status.success() && report.trim().is_empty(),
        "lintian on {}:\n{report}",
        deb.display()
    );
    eprintln!("xtask: dist: lintian: no tags on {}", file_name(&deb));
    Ok(deb)
}

/// The container image, built with podman from a base made here (no registry is reached):
/// the Debian 12 root of [`BASE_PACKAGES`] and the binary. Also saved as a `docker load`able
/// archive.
fn image(out: &Path, binary: &Path, version: &str) -> anyhow::Result<(String, PathBuf)> {
    let context = out.join("image");
    if context.exists() {
        std::fs::remove_dir_all(&context)?;
    }
    std::fs::create_dir_all(&context)?;
    fresh::host_tools()?;
    fresh::mmdebstrap("extract", BASE_PACKAGES, &context.join("base.tar"))?;
    std::fs::copy(binary, context.join("temporal-observer"))?;
    std::fs::write(
        context.join("Containerfile"),
        "FROM scratch\n\
         ADD base.tar /\n\
         COPY temporal-observer /usr/bin/temporal-observer\n\
         ENTRYPOINT [\"/usr/bin/temporal-observer\"]\n\
         CMD [\"watch\"]\n",
    )?;
    let tag = format!("localhost/temporal-observer:{version}");
    sh(Command::new("podman")
        .args(["build", "--quiet", "--pull=never", "-t", &tag, "-f"])
        .arg(context.join("Containerfile"))
        .arg(&context))?;
    let archive = out.join(format!("temporal-observer-{version}-image.tar"));
    let _ = std::fs::remove_file(&archive);
    sh(Command::new("podman")
        .args(["save", "--quiet", "--format", "docker-archive", "-o"])
        .arg(&archive)
        .arg(&tag))?;
    Ok((tag, archive))
}

fn check(out: &Path, artifacts: &Artifacts) -> anyhow::Result<()> {
    check_bundle(out, artifacts)?;
    check_package(out, artifacts)?;
    check_image(out, artifacts)?;
    Ok(())
}

/// The bundle's binary in a Debian 12 root that holds the C library and nothing else: it
/// starts, and reads the sample worker.
fn check_bundle(out: &Path, artifacts: &Artifacts) -> anyhow::Result<()> {
    eprintln!("xtask: dist --check: the bundle in a root with only {BASE_PACKAGES:?}");
    let root = out.join("roots/bundle");
    fresh::make_clean_root(&root, "extract", BASE_PACKAGES)?;
    std::fs::create_dir_all(root.join("opt"))?;
    sh(Command::new("tar")
        .arg("-xzf")
        .arg(&artifacts.bundle)
        .arg("-C")
        .arg(root.join("opt")))?;
    let name = format!("temporal-observer-{}-{TARGET}", artifacts.version);
    let inside = format!("/opt/{name}/temporal-observer");
    let said = output(
        Command::new("chroot")
            .arg(&root)
            .args([&inside, "--version"]),
    )?;
    ensure!(
        said.starts_with(&format!("temporal-observer {} (commit ", artifacts.version)),
        "the bundle's binary says {said:?}"
    );
    // `inspect` reads a worker's ELF, symbols and layouts: the binary's whole resolution path.
    let worker = root.join("opt/sample-worker");
    std::fs::copy(
        paths().fixtures.join("target/release/sample-worker"),
        &worker,
    )?;
    let inspected =
        output(
            Command::new("chroot")
                .arg(&root)
                .args([&inside, "inspect", "/opt/sample-worker"]),
        )?;
    ensure!(
        inspected.contains("sdk-core"),
        "inspect in the bare root said:\n{inspected}"
    );
    eprintln!("xtask: dist --check: bundle: {}", said.trim());
    fresh::remove_root(&root)
}

/// The package installed with apt in a clean Debian 12 root, then used from there (chroot, with
/// the host's /proc as a booted machine has it) to attach to the sample worker.
fn check_package(out: &Path, artifacts: &Artifacts) -> anyhow::Result<()> {
    eprintln!("xtask: dist --check: the package in a clean Debian 12 root");
    let root = out.join("roots/package");
    fresh::make_clean_root(&root, "apt", &[])?;
    let deb_name = file_name(&artifacts.deb);
    std::fs::copy(&artifacts.deb, root.join("tmp").join(&deb_name))?;
    sh(Command::new("chroot")
        .arg(&root)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["apt-get", "install", "-y", "-qq"])
        .arg(format!("/tmp/{deb_name}")))?;
    for installed in [
        "usr/bin/temporal-observer",
        "usr/lib/systemd/system/temporal-observer.service",
        "etc/default/temporal-observer",
        "usr/share/doc/temporal-observer/THIRD-PARTY-LICENSES.txt",
    ] {
        ensure!(
            root.join(installed).is_file(),
            "the package did not install /{installed}"
        );
    }
    ensure!(
        !root
            .join("etc/systemd/system/multi-user.target.wants/temporal-observer.service")
            .exists(),
        "the package enabled the service; it must be installed disabled"
    );
    let wrapper = out.join("roots/observer-in-package-root");
    std::fs::write(&wrapper, chroot_wrapper(&root))?;
    make_executable(&wrapper)?;

    let mut env = Env::require("dist_package")?;
    env.observer = wrapper;
    let worker = Worker::Rust(env.worker.clone());
    let outcome = observe_worker(&env, &worker, Transport::Grpc, &[], &Mix::every_end_state())?;
    assert_matches_server(&outcome);
    eprintln!(
        "xtask: dist --check: package: {} runs attached from the package root, exact against the \
         server",
        outcome.truth.runs.len()
    );
    fresh::stop_processes_in(&root);
    fresh::remove_root(&root)
}

/// A program that runs the root's `/usr/bin/temporal-observer` with the arguments it is given,
/// in a mount namespace of its own with what a booted machine has mounted, and the checkout at
/// the same path (the tests' recordings are written there). It execs all the way: its PID is
/// the observer's, so signals reach it.
fn chroot_wrapper(root: &Path) -> String {
    let r = fresh::shell_quote(&root.to_string_lossy());
    let work = fresh::shell_quote(&paths().root.to_string_lossy());
    let script = format!(
        "set -e
mount -t proc proc {r}/proc
mount -t sysfs sysfs {r}/sys
mount -t tracefs nodev {r}/sys/kernel/tracing
mount --rbind /dev {r}/dev
mkdir -p {r}{work}
mount --bind {work} {r}{work}
exec chroot {r} /usr/bin/temporal-observer \"$@\""
    );
    format!(
        "#!/bin/sh\n# Made by `cargo xtask dist --check`.\nexec unshare --mount --propagation \
         private /bin/sh -c {} temporal-observer \"$@\"\n",
        fresh::shell_quote(&script)
    )
}

/// `podman run` as the DaemonSet runs the image: the host's PID namespace and network, every
/// capability dropped but `keep`, a read-only root file system, the host's tracefs mounted
/// read-only.
fn podman_run(image: &str, keep: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "podman",
        // crun refuses this machine's hybrid cgroup hierarchy; runc takes it.
        "--runtime",
        "runc",
        "run",
        "--rm",
        "--pull=never",
        "--pid=host",
        "--network=host",
        "--read-only",
        "--user=0",
        "--security-opt=no-new-privileges",
        // A pod without a seccompProfile runs unconfined (Kubernetes' default).
        "--security-opt=seccomp=unconfined",
        "--cap-drop=all",
        "-v",
        "/sys/kernel/tracing:/sys/kernel/tracing:ro",
    ]
    .map(String::from)
    .to_vec();
    if !keep.is_empty() {
        args.push(format!("--cap-add={}", keep.join(",")));
    }
    args.extend(container_limits());
    args.push(format!("--env=K8S_NODE_NAME={}", hostname()));
    args.push(image.to_string());
    args
}

/// podman gives a container higher open-file and process limits than its own; raising them
/// needs CAP_SYS_RESOURCE, which this machine's root does not have. The container then gets
/// podman's own (it lowers its process limit to 32768 when it cannot raise it).
fn container_limits() -> Vec<String> {
    let mut limits = Vec::new();
    let mut nofile = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit to the pointer it is given, which is valid.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut nofile) } == 0 {
        limits.push(format!(
            "--ulimit=nofile={}:{}",
            nofile.rlim_cur, nofile.rlim_max
        ));
    }
    limits.push("--ulimit=nproc=32768:32768".to_string());
    limits
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

/// The image run as the DaemonSet runs it: `watch` finds the sample worker started on the host
/// and its metrics equal the server's record; with either capability dropped it refuses, naming
/// it.
fn check_image(out: &Path, artifacts: &Artifacts) -> anyhow::Result<()> {
    eprintln!(
        "xtask: dist --check: the image {} as the DaemonSet runs it",
        artifacts.image
    );
    let wrapper_for = |keep: &[&str], name: &str| -> anyhow::Result<PathBuf> {
        let args: Vec<String> = podman_run(&artifacts.image, keep)
            .iter()
            .map(|a| fresh::shell_quote(a))
            .collect();
        let path = out.join("roots").join(name);
        std::fs::create_dir_all(out.join("roots"))?;
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\n# Made by `cargo xtask dist --check`.\nexec {} \"$@\"\n",
                args.join(" ")
            ),
        )?;
        make_executable(&path)?;
        Ok(path)
    };
    let mut env = Env::require("dist_image")?;
    env.observer = wrapper_for(&MANIFEST_CAPABILITIES, "image-as-daemonset")?;
    let server = DevServer::start(&env)?;
    let receiver = Receiver::start(Transport::Grpc)?;
    let mut observer = Observer::watch(
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
        ],
    )?;
    let queue = unique("dist-image");
    let worker = start_worker_binary(&env, &env.worker, &server, &queue, &[])?;
    observer.process.wait_for_log(
        &format!("probes to PID {} (", worker.pid()),
        Duration::from_secs(20),
    )?;
    let truth = drive(&env, &server, &queue, &queue, &Mix::every_end_state())?;
    let pid = worker.pid().to_string();
    receiver.wait_for(Duration::from_secs(30), "the worker's ends", |r| {
        r.processes
            .get(&pid)
            .is_some_and(|p| every_run_ended(p, &truth))
    })?;
    let (status, _, log) = observer.stop()?;
    ensure!(
        status.success(),
        "the image's watch exited with {status}; log:\n{log}"
    );
    let received = receiver.received();
    let process = received
        .processes
        .get(&pid)
        .with_context(|| format!("no resource for PID {pid}"))?;
    assert_counts_match(process, &truth);
    let node = process.resource.get("k8s.node.name").cloned();
    ensure!(
        node.as_deref() == Some(hostname().as_str()),
        "k8s.node.name is {node:?}"
    );
    eprintln!(
        "xtask: dist --check: image: {} runs seen by watch in the container, exact against the \
         server",
        truth.runs.len()
    );
    drop(worker);

    for dropped in MANIFEST_CAPABILITIES {
        let kept: Vec<&str> = MANIFEST_CAPABILITIES
            .iter()
            .copied()
            .filter(|c| *c != dropped)
            .collect();
        env.observer = wrapper_for(&kept, &format!("image-without-{dropped}"))?;
        let (status, stderr) = run_observer_via(&env, &[], &["watch", "--duration-secs", "30"])?;
        let refusal = stderr.lines().find(|l| l.starts_with("error:"));
        ensure!(
            !status.success()
                && refusal.is_some_and(|l| l.contains("missing privileges") && l.contains(dropped)),
            "the image without {dropped}: {status}, stderr:\n{stderr}"
        );
        eprintln!(
            "xtask: dist --check: image without {dropped}: {}",
            refusal.unwrap_or_default()
        );
    }
    Ok(())
}

fn make_executable(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Runs a command and returns its stdout; fails with its stderr.
fn output(command: &mut Command) -> anyhow::Result<String> {
    let described = format!("{command:?}");
    let out = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {described}"))?;
    if !out.status.success() {
        bail!(
            "{described} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_glibc_floor_is_the_newest_glibc_version_the_binary_needs() {
        // This test's own binary, against binutils' reading of its version needs.
        let me = std::env::current_exe().expect("the test's path");
        let readelf = Command::new("readelf")
            .args(["-V", "--wide"])
            .arg(&me)
            .output()
            .expect("readelf (binutils) runs");
        let newest = String::from_utf8_lossy(&readelf.stdout)
            .split_whitespace()
            .filter_map(|word| word.strip_prefix("GLIBC_"))
            .filter_map(|v| {
                let (major, minor) = v.split_once('.')?;
                Some((major.parse().ok()?, minor.split('.').next()?.parse().ok()?))
            })
            .max();
        let data = std::fs::read(&me).expect("reading the test binary");
        assert_eq!(glibc_floor(&data).ok(), newest);
        assert!(newest.is_some());
        assert!(glibc_floor(b"not an ELF").is_err());
    }

    #[test]
    fn a_section_runs_to_the_next_heading_of_its_level() {
        let text = "# T\n\n## Install\n\nA\n\n### Sub\n\nB\n\n## Next\n\nC\n";
        assert_eq!(
            section(text, "## Install"),
            Some("## Install\n\nA\n\n### Sub\n\nB\n\n")
        );
        assert_eq!(section(text, "## Next"), Some("## Next\n\nC\n"));
        assert_eq!(section(text, "## Missing"), None);
    }
}
