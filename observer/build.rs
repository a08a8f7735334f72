//! Builds `observer-ebpf` for the BPF target and puts the object where `src/probes.rs` embeds it.
//!
//! Two toolchain routes work (see README):
//! - `debian`: Debian's `rustc-web` with its precompiled BPF `core` (`libstd-rust-web-dev-bpf`),
//!   unlocked with `RUSTC_BOOTSTRAP=1`; no `core` to build.
//! - `nightly`: rustup's nightly with `rust-src`, building `core` with `-Z build-std=core`.
//!
//! Both need `bpf-linker` on PATH (or in `~/.cargo/bin`). `OBSERVER_EBPF_TOOLCHAIN=debian|nightly`
//! picks one; otherwise the first that is complete is used. When none is, the build fails with
//! what to install. `OBSERVER_EBPF_STUB=1` embeds an empty object instead (for `cargo check` and
//! docs on machines without the toolchain); such a binary refuses to attach and says why.

use std::{
    env,
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

const TARGET: &str = "bpfel-unknown-none";
const OBJECT_NAME: &str = "observer.bpf.o";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo"));
    version_info(&manifest_dir);
    let ebpf_dir = manifest_dir.join("../observer-ebpf");
    let common_dir = manifest_dir.join("../observer-common");
    for watched in [
        ebpf_dir.join("src"),
        ebpf_dir.join("Cargo.toml"),
        common_dir.join("src"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    for var in ["OBSERVER_EBPF_TOOLCHAIN", "OBSERVER_EBPF_STUB", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let object = out_dir.join(OBJECT_NAME);

    if env::var_os("OBSERVER_EBPF_STUB").is_some_and(|v| v == "1") {
        std::fs::write(&object, []).expect("write stub eBPF object");
        println!(
            "cargo:warning=OBSERVER_EBPF_STUB=1: embedding an empty eBPF object; this binary cannot attach"
        );
        return;
    }

    let path = search_path();
    let linker = find_in(&path, "bpf-linker");
    let choice = env::var("OBSERVER_EBPF_TOOLCHAIN").ok();
    let route = match choose_route(choice.as_deref(), linker.is_some()) {
        Ok(route) => route,
        Err(why) => fail(&why),
    };
    // A fixed directory (not OUT_DIR) so `cargo build`, `clippy` and `test` share one eBPF build.
    let target_dir = out_dir
        .ancestors()
        .nth(4)
        .map(|target| target.join("observer-ebpf"))
        .unwrap_or_else(|| out_dir.join("observer-ebpf"));

    let mut cmd = match route {
        Route::Debian => {
            let mut c = Command::new("/usr/bin/cargo");
            c.env("RUSTC", "/usr/bin/rustc");
            c
        }
        Route::Nightly => {
            let mut c = Command::new("rustup");
            c.args(["run", "nightly", "cargo"]);
            c
        }
    };
    cmd.current_dir(&ebpf_dir)
        .args(["build", "--release", "--target", TARGET, "--target-dir"])
        .arg(&target_dir);
    if route == Route::Nightly {
        cmd.args(["-Z", "build-std=core"]);
    }
    // Nothing of the outer build may leak into the BPF build: its flags, wrapper and target.
    for (key, _) in env::vars_os() {
        let key = key.to_string_lossy().into_owned();
        let outer = key.starts_with("CARGO_") && key != "CARGO_HOME"
            || key.starts_with("RUSTC")
            || key == "RUSTFLAGS"
            || key == "RUSTDOCFLAGS"
            || key == "TARGET"
            || key == "HOST";
        if outer {
            cmd.env_remove(&key);
        }
    }
    if route == Route::Debian {
        cmd.env("RUSTC", "/usr/bin/rustc");
    }
    // The programs read the probed architecture's registers (as aya-build does it).
    let arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into());
    // BTF, with the function info the verifier requires of a `bpf_loop` callback.
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Clink-arg=--btf"),
    );
    cmd.env("RUSTC_BOOTSTRAP", "1").env("PATH", &path);

    println!(
        "cargo:warning=building observer-ebpf with the {} toolchain route",
        route.name()
    );
    let status = cmd
        .status()
        .unwrap_or_else(|e| fail(&format!("could not run cargo for {TARGET}: {e}")));
    if !status.success() {
        fail(&format!(
            "building observer-ebpf for {TARGET} failed ({status}); see the errors above"
        ));
    }
    let built = target_dir
        .join(TARGET)
        .join("release")
        .join("observer-ebpf");
    std::fs::copy(&built, &object)
        .unwrap_or_else(|e| fail(&format!("copying {} failed: {e}", built.display())));
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    Debian,
    Nightly,
}

impl Route {
    fn name(self) -> &'static str {
        match self {
            Route::Debian => "debian (rustc-web + precompiled BPF core)",
            Route::Nightly => "nightly (rustup nightly + rust-src, -Z build-std=core)",
        }
    }
}

const INSTALL_HELP: &str = "\
To build the eBPF programs, install one of these toolchain routes, or run `cargo xtask setup`:
  debian:  apt-get install rustc-web cargo-web libstd-rust-web-dev-bpf llvm-22-dev libpolly-22-dev
  nightly: rustup toolchain install nightly --component rust-src
and bpf-linker for either:
  LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22
(OBSERVER_EBPF_STUB=1 builds without them, for `cargo check` only: that binary cannot attach.)";

fn choose_route(choice: Option<&str>, have_linker: bool) -> Result<Route, String> {
    let debian = debian_missing();
    let nightly = nightly_missing();
    let mut missing = Vec::new();
    if !have_linker {
        missing.push("bpf-linker (not on PATH nor in ~/.cargo/bin)".to_string());
    }
    let route = match choice {
        Some("debian") => {
            missing.extend(debian);
            Route::Debian
        }
        Some("nightly") => {
            missing.extend(nightly);
            Route::Nightly
        }
        Some(other) => {
            return Err(format!(
                "OBSERVER_EBPF_TOOLCHAIN={other}: expected `debian` or `nightly`"
            ));
        }
        None if debian.is_empty() => Route::Debian,
        None if nightly.is_empty() => Route::Nightly,
        None => {
            missing.push(format!("debian route: {}", debian.join(", ")));
            missing.push(format!("nightly route: {}", nightly.join(", ")));
            Route::Debian
        }
    };
    if missing.is_empty() {
        Ok(route)
    } else {
        Err(format!(
            "missing for the eBPF build: {}\n{INSTALL_HELP}",
            missing.join("; ")
        ))
    }
}

/// What the Debian route lacks on this machine (empty when complete).
fn debian_missing() -> Vec<String> {
    let mut missing = Vec::new();
    if !Path::new("/usr/bin/rustc").exists() || !Path::new("/usr/bin/cargo").exists() {
        missing
            .push("/usr/bin/rustc and /usr/bin/cargo (apt-get install rustc-web cargo-web)".into());
    }
    let core_dir = Path::new("/usr/lib/rustlib").join(TARGET).join("lib");
    let has_core = std::fs::read_dir(&core_dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        })
        .unwrap_or(false);
    if !has_core {
        missing.push(format!(
            "{} (apt-get install libstd-rust-web-dev-bpf)",
            core_dir.display()
        ));
    }
    missing
}

/// What the rustup nightly route lacks on this machine (empty when complete).
fn nightly_missing() -> Vec<String> {
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    match sysroot {
        None => vec!["rustup with a nightly toolchain".into()],
        Some(root) if !root.join("lib/rustlib/src/rust/library/core").exists() => {
            vec!["nightly's rust-src (rustup component add rust-src --toolchain nightly)".into()]
        }
        Some(_) => Vec::new(),
    }
}

/// `--version`'s long form, `VERSION (commit COMMIT, built YYYY-MM-DD)`, as
/// `TEMPORAL_OBSERVER_LONG_VERSION`. The commit is `TEMPORAL_OBSERVER_COMMIT` where set (a build
/// from a source tree without `.git`), else the checkout's `HEAD`; the date is
/// `SOURCE_DATE_EPOCH`'s where set, else the commit's, in UTC: never the clock, so that building
/// one commit twice gives the same binary.
fn version_info(manifest_dir: &Path) {
    for var in ["TEMPORAL_OBSERVER_COMMIT", "SOURCE_DATE_EPOCH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .arg("-C")
            .arg(manifest_dir)
            .args(args)
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !text.is_empty()).then_some(text)
    };
    // A new commit or checkout moves HEAD or the branch it names.
    if let Some(git_dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let git_dir = PathBuf::from(git_dir);
        println!("cargo:rerun-if-changed={}", git_dir.join("HEAD").display());
        println!(
            "cargo:rerun-if-changed={}",
            git_dir.join("packed-refs").display()
        );
        if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
            println!("cargo:rerun-if-changed={}", git_dir.join(branch).display());
        }
    }
    let commit = env::var("TEMPORAL_OBSERVER_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    let epoch = env::var("SOURCE_DATE_EPOCH")
        .ok()
        .or_else(|| git(&["log", "-1", "--format=%ct"]))
        .and_then(|e| e.trim().parse::<i64>().ok());
    let date = epoch.map_or_else(
        || "unknown".to_string(),
        |seconds| {
            let (year, month, day) = civil_from_days(seconds.div_euclid(86_400));
            format!("{year:04}-{month:02}-{day:02}")
        },
    );
    println!(
        "cargo:rustc-env=TEMPORAL_OBSERVER_LONG_VERSION={} (commit {commit}, built {date})",
        env::var("CARGO_PKG_VERSION").unwrap_or_default()
    );
}

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard
/// Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// PATH with `~/.cargo/bin` appended, where `cargo install` puts bpf-linker.
fn search_path() -> OsString {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
    {
        dirs.push(home.join("bin"));
    }
    env::join_paths(dirs).unwrap_or_default()
}

fn find_in(path: &OsString, program: &str) -> Option<PathBuf> {
    env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

fn fail(message: &str) -> ! {
    eprintln!("\nerror: {message}\n");
    for line in message.lines() {
        println!("cargo:warning={line}");
    }
    std::process::exit(1);
}
