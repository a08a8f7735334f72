//! Symbol, version and layout resolution on the real sample worker binaries users ship (default
//! release and fat LTO; no root needed). The DWARF builds are checked in `layout_builds.rs`.

use std::path::PathBuf;

use anyhow::Context as _;
use object::{Object as _, ObjectSection as _};
use temporal_observer::{
    layout::{TargetLayout, niche::NicheRule},
    plan::{ArgumentsSource, LayoutSource, Plan, resolve, resolve_with_table},
    probes::PROBES,
    symbols::SymbolIndex,
    verify::Verification,
};

/// The one candidate of a plan known for certain.
fn certain(plan: &Plan) -> &temporal_observer::plan::Candidate {
    assert_eq!(plan.verification, Verification::Certain);
    assert_eq!(plan.candidates.len(), 1);
    &plan.candidates[0]
}

fn table_row(rustc: &str) -> LayoutSource {
    LayoutSource::Table {
        sdk_core: "0.10.1".into(),
        rustc: rustc.into(),
        niches: None,
    }
}

/// Where each candidate's layout came from, in order.
fn sources(plan: &Plan) -> Vec<LayoutSource> {
    plan.candidates
        .iter()
        .map(|c| c.layout_source.clone())
        .collect()
}

fn fixture(profile: &str) -> anyhow::Result<Vec<u8>> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/worker/target")
        .join(profile)
        .join("sample-worker");
    std::fs::read(&path).with_context(|| {
        format!(
            "missing {} (run `cargo xtask test`, which builds it)",
            path.display()
        )
    })
}

#[test]
fn the_release_worker_resolves_every_probe_once_with_the_shipped_layout() -> anyhow::Result<()> {
    let image = fixture("release")?;
    let resolved = resolve(&image)?;
    assert_eq!(resolved.versions.sdk_core.as_deref(), Some("0.10.1"));
    assert_eq!(resolved.versions.rustc.as_deref(), Some("1.95.0"));
    let candidate = certain(&resolved);
    assert_eq!(
        candidate.layout_source,
        table_row("1.95.0"),
        "a default release build has no DWARF"
    );
    assert_eq!(resolved.probes.len(), PROBES.len());
    assert_eq!(
        candidate.arguments_source,
        ArgumentsSource::Table {
            build: "release".into()
        }
    );
    assert!(
        resolved.not_covered().is_empty(),
        "{:?}",
        resolved.not_covered()
    );
    let registers = |name: &str| {
        resolved
            .probes
            .iter()
            .zip(&candidate.registers)
            .find(|(p, _)| p.spec.name == name)
            .map(|(p, r)| (p.point.function, *r))
    };
    // The registers the DWARF of this build gives (see SDK-CORE.md): the machines (`self`) in
    // rsi (rdi is the activation's return slot), the completion in rsi, the eviction's run id
    // and reason in rsi and rcx, the worker config in rsi, the worker (`self`) in rdi.
    assert!(
        registers("activation").is_some_and(|(f, r)| f.ends_with("get_wf_activation") && r[0] == 1)
    );
    assert_eq!(registers("completion").map(|(_, r)| r[0]), Some(1));
    assert_eq!(registers("eviction").map(|(_, r)| r), Some([1, 3]));
    assert!(
        registers("worker_start")
            .is_some_and(|(f, r)| f.ends_with("new_with_pollers") && r[0] == 1)
    );
    assert!(
        registers("worker_running").is_some_and(|(f, r)| f.ends_with("mark_started") && r[0] == 0)
    );
    for planned in &resolved.probes {
        assert_eq!(
            planned.functions.len(),
            1,
            "{}: {:?}",
            planned.point.function,
            planned.functions
        );
        let f = &planned.functions[0];
        assert!(
            f.mangled.starts_with("_ZN") && f.mangled.ends_with('E'),
            "legacy mangling: {}",
            f.mangled
        );
        assert!(f.file_offset > 0 && f.file_offset < image.len() as u64);
    }
    // Each file offset is where the uprobe lands: the bytes there are the bytes the ELF maps at
    // the function's address.
    let elf = object::File::parse(&*image)?;
    for planned in &resolved.probes {
        let f = &planned.functions[0];
        let mapped = elf
            .sections()
            .find_map(|s| {
                let start = s.address();
                (start <= f.address && f.address < start + s.size())
                    .then(|| s.data().ok())
                    .flatten()
                    .map(|d| {
                        let at = (f.address - start) as usize;
                        d[at..at + 16].to_vec()
                    })
            })
            .context("no section holds the function")?;
        let at = f.file_offset as usize;
        assert_eq!(&image[at..at + 16], mapped.as_slice(), "{}", f.path);
    }
    let symbols = SymbolIndex::from_elf(&image)?;
    assert!(symbols.len() > 10_000, "{} symbols", symbols.len());
    Ok(())
}

/// Fat LTO inlines `mark_started` away and moves code: the plan switches to the surviving
/// functions, with the registers the LTO build's DWARF gives, and the layout stays the same.
#[test]
fn the_lto_worker_resolves_with_the_lto_registers() -> anyhow::Result<()> {
    let image = fixture("lto")?;
    let resolved = resolve(&image)?;
    let candidate = certain(&resolved);
    assert_eq!(candidate.layout_source, table_row("1.95.0"));
    assert_eq!(
        candidate.arguments_source,
        ArgumentsSource::Table {
            build: "lto".into()
        }
    );
    let start = resolved
        .probes
        .iter()
        .find(|p| p.spec.name == "worker_start")
        .context("worker_start planned")?;
    assert!(start.point.function.ends_with("new_with_pollers"));
    // LTO inlined `mark_started`: no probe names the workers running at attach, they are counted.
    assert!(
        resolved
            .probes
            .iter()
            .all(|p| p.spec.name != "worker_running")
    );
    assert_eq!(resolved.probes.len(), PROBES.len() - 1);
    assert_eq!(
        resolved.not_covered().len(),
        1,
        "{:?}",
        resolved.not_covered()
    );
    assert!(resolved.probes.iter().all(|p| p.functions.len() == 1));

    Ok(())
}

fn inspect(target: &std::path::Path) -> anyhow::Result<(bool, serde_json::Value)> {
    let output = std::process::Command::new(e2e::observer_binary()?)
        .args(["inspect", "--output", "json"])
        .arg(target)
        .output()?;
    Ok((
        output.status.success(),
        serde_json::from_slice(&output.stdout)?,
    ))
}

fn fixture_path(profile: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/worker/target")
        .join(profile)
        .join("sample-worker")
}

#[test]
fn inspect_reports_versions_layout_source_and_every_probe() -> anyhow::Result<()> {
    let (ok, report) = inspect(&fixture_path("release"))?;
    assert!(ok, "{report}");
    assert_eq!(report["rustc"], "1.95.0");
    assert_eq!(report["sdk_core"], "0.10.1");
    assert_eq!(report["mangling"], "legacy");
    assert_eq!(report["layout_source"]["table"]["rustc"], "1.95.0");
    assert_eq!(report["verification"], "certain");
    assert_eq!(report["refused"], serde_json::Value::Null);
    let probes = report["probes"].as_array().context("probes")?;
    assert_eq!(probes.len(), PROBES.len());
    assert!(
        probes
            .iter()
            .all(|p| p["locations"].as_array().is_some_and(|l| l.len() == 1)),
        "{probes:?}"
    );
    assert_eq!(report["not_covered"].as_array().map(Vec::len), Some(0));
    assert_eq!(report["arguments_source"]["table"]["build"], "release");

    let (ok, report) = inspect(&fixture_path("lto"))?;
    assert!(ok, "{report}");
    assert_eq!(report["layout_source"]["table"]["rustc"], "1.95.0");
    assert_eq!(report["arguments_source"]["table"]["build"], "lto");
    let probes = report["probes"].as_array().context("probes")?;
    assert_eq!(probes.len(), PROBES.len() - 1);
    let activation = probes
        .iter()
        .find(|p| p["name"] == "activation")
        .context("activation probe")?;
    assert_eq!(activation["inputs"][0], "address of `self` in rsi");
    let not_covered = report["not_covered"].as_array().context("not_covered")?;
    assert_eq!(not_covered.len(), 1, "{not_covered:?}");
    assert!(
        not_covered[0]
            .as_str()
            .is_some_and(|c| c.contains("counted from their workflow-processing threads")),
        "{not_covered:?}"
    );
    Ok(())
}

#[test]
fn inspect_refuses_a_stripped_worker_and_a_non_worker() -> anyhow::Result<()> {
    let dir = scratch_dir()?;
    let stripped = dir.join("sample-worker-stripped");
    let status = std::process::Command::new("objcopy")
        .arg("--strip-all")
        .arg(fixture_path("release"))
        .arg(&stripped)
        .status();
    assert!(
        status.is_ok_and(|s| s.success()),
        "objcopy (binutils) is needed to make a stripped worker"
    );
    let (ok, report) = inspect(&stripped)?;
    assert!(!ok);
    assert_eq!(report["sdk_core"], "0.10.1", "the version survives strip");
    assert!(
        report["refused"]
            .as_str()
            .is_some_and(|r| r.contains("stripped") && r.contains("strip = \"symbols\"")),
        "{report}"
    );

    let (ok, report) = inspect(std::path::Path::new("/bin/true"))?;
    assert!(!ok);
    assert!(
        report["refused"]
            .as_str()
            .is_some_and(|r| r.contains("not a Temporal Rust worker")),
        "{report}"
    );
    Ok(())
}

fn scratch_dir() -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-logs/inspect");
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The shipped layout table without the rows of these rustcs, as a file for `--layout-table`.
fn table_without(rustcs: &[&str]) -> anyhow::Result<String> {
    let mut rows: Vec<serde_json::Value> =
        serde_json::from_str(temporal_observer::layout::SHIPPED_TABLE)?;
    rows.retain(|r| !rustcs.iter().any(|v| r["rustc"] == *v));
    Ok(serde_json::to_string(&rows)?)
}

/// A worker whose rustc the table has no row for: every row of its sdk-core is a candidate, each
/// with the registers of its build of the same shape, for the live records to decide.
#[test]
fn without_a_row_for_its_rustc_the_rows_of_its_sdk_core_are_candidates() -> anyhow::Result<()> {
    let held_out = table_without(&["1.95.0"])?;
    let resolved = resolve_with_table(&fixture("release")?, &held_out)?;
    assert_eq!(resolved.verification, Verification::Live);
    let sources = sources(&resolved);
    assert_eq!(sources, [table_row("1.96.0"), table_row("1.97.0-nightly")]);
    for c in &resolved.candidates {
        assert_eq!(
            c.arguments_source,
            ArgumentsSource::Table {
                build: "release".into()
            }
        );
    }
    assert!(
        resolved
            .evidence
            .iter()
            .any(|e| e.contains("no DWARF and no row for this rustc")),
        "{:?}",
        resolved.evidence
    );
    // Only the 1.95 row has an LTO build. Without it, the release builds of the other rows have
    // all of the LTO worker's probe functions (LTO only inlined some away): their registers for
    // those are candidates, to be verified live, never taken as certain.
    let lto = resolve_with_table(&fixture("lto")?, &held_out)?;
    assert_eq!(lto.verification, Verification::Live);
    assert_eq!(lto.candidates.len(), 2);
    assert!(
        lto.evidence
            .iter()
            .any(|e| e.contains("its `release` build has all of this binary's probe functions")),
        "{:?}",
        lto.evidence
    );
    // A table whose builds all lack one of the binary's functions: refused, not guessed at.
    let mut rows: Vec<serde_json::Value> = serde_json::from_str(&held_out)?;
    for row in &mut rows {
        for build in row["arguments"].as_array_mut().into_iter().flatten() {
            if let Some(functions) = build["functions"].as_object_mut() {
                functions.retain(|f, _| !f.ends_with("validate_completion"));
            }
        }
    }
    let err = resolve_with_table(&fixture("release")?, &serde_json::to_string(&rows)?)
        .expect_err("no build has validate_completion");
    assert!(
        err.to_string().contains("its build matches no build"),
        "{err}"
    );
    Ok(())
}

/// The nightly worker (rustc 1.97, whose niche rule differs) with its row held out: no row left
/// was built by a rustc of its rule, so the candidates are the 1.95 row (1.96's reads alike) as
/// generated and re-placed by the other rule, and the re-placed one has exactly the tags of the
/// held-out row.
#[test]
fn without_a_row_of_its_niche_rule_the_rows_are_re_placed_by_it() -> anyhow::Result<()> {
    let held_out = table_without(&["1.97.0-nightly"])?;
    let resolved = resolve_with_table(&fixture("nightly/release")?, &held_out)?;
    assert_eq!(resolved.versions.rustc.as_deref(), Some("1.97.0-nightly"));
    assert_eq!(resolved.verification, Verification::Live);
    let sources = sources(&resolved);
    let re_placed = LayoutSource::Table {
        sdk_core: "0.10.1".into(),
        rustc: "1.95.0".into(),
        niches: Some(NicheRule::NearestZero),
    };
    assert_eq!(sources, [table_row("1.95.0"), re_placed]);
    assert_eq!(resolved.candidates[1].same_as, ["rustc 1.96.0 re-placed"]);
    let rows: Vec<TargetLayout> = serde_json::from_str(temporal_observer::layout::SHIPPED_TABLE)?;
    let nightly = rows
        .iter()
        .find(|r| r.rustc == "1.97.0-nightly")
        .context("the nightly row")?;
    let tags = |l: &TargetLayout| {
        (
            l.job.clone(),
            l.completion_status.clone(),
            l.command.clone(),
            l.failure_info.clone(),
            l.failure_some,
        )
    };
    assert_eq!(tags(&resolved.candidates[1].layout), tags(nightly));
    assert_ne!(tags(&resolved.candidates[0].layout), tags(nightly));
    assert!(
        resolved
            .evidence
            .iter()
            .any(|e| e.contains("2 row(s) of this sdk-core release line are candidates, and 2 more with their tags re-placed")),
        "{:?}",
        resolved.evidence
    );
    Ok(())
}

/// `--version` names the package version, the commit the binary was built from and that
/// commit's date (UTC): the checkout's own, since `cargo xtask test` builds it from there.
#[test]
fn version_names_the_commit_and_its_date() -> anyhow::Result<()> {
    let git = |args: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new("git")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("TZ", "UTC")
            .args(args)
            .output()?;
        anyhow::ensure!(out.status.success(), "git {args:?} failed");
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"])?;
    let date = git(&["log", "-1", "--date=format-local:%Y-%m-%d", "--format=%cd"])?;
    let run = |flag: &str| -> anyhow::Result<String> {
        let out = std::process::Command::new(e2e::observer_binary()?)
            .arg(flag)
            .output()?;
        anyhow::ensure!(out.status.success(), "{flag} failed");
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    };
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        run("--version")?,
        format!("temporal-observer {version} (commit {commit}, built {date})"),
        "rebuild the observer (`cargo build --release -p observer`) after committing"
    );
    assert_eq!(run("-V")?, format!("temporal-observer {version}"));
    Ok(())
}
