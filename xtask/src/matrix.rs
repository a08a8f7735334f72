//! `cargo xtask matrix`: the sample worker built the ways users ship workers, each observed end
//! to end (or refused), in one table.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, ensure};

use crate::{
    cargo,
    fixture::{DEBIAN, NIGHTLY, build_worker, worker_binary},
    paths, sh,
};

/// How a variant's binary is made.
enum Make {
    /// `cargo build --profile <profile>` of the fixture, with the default or another toolchain.
    Profile {
        profile: &'static str,
        toolchain: Option<&'static str>,
    },
    /// `objcopy <args>` of another variant's binary: what Cargo's `strip` setting makes the
    /// linker do, without rebuilding the same code under another profile name.
    Objcopy {
        from: &'static str,
        args: &'static [&'static str],
    },
}

struct Variant {
    name: &'static str,
    /// The build setting, as a user would write it.
    setting: &'static str,
    make: Make,
    /// The binary must be refused, with a message containing this.
    refused_with: Option<&'static str>,
    /// Observed with the shipped layout table minus this rustc's row (the toolchain that built
    /// the binary): its layout must come from the live verification of the other rows.
    hold_out: Option<&'static str>,
}

const VARIANTS: &[Variant] = &[
    Variant {
        name: "release",
        setting: "default `--release`",
        make: Make::Profile {
            profile: "release",
            toolchain: None,
        },
        refused_with: None,
        hold_out: None,
    },
    Variant {
        name: "lto",
        setting: "`lto = \"fat\"`, `codegen-units = 1`",
        make: Make::Profile {
            profile: "lto",
            toolchain: None,
        },
        refused_with: None,
        hold_out: None,
    },
    Variant {
        name: "debug-info",
        setting: "`debug = true`",
        make: Make::Profile {
            profile: "debug-info",
            toolchain: None,
        },
        refused_with: None,
        hold_out: None,
    },
    Variant {
        name: "strip-debuginfo",
        setting: "`debug = true`, `strip = \"debuginfo\"`",
        make: Make::Objcopy {
            from: "debug-info",
            args: &["--strip-debug"],
        },
        refused_with: None,
        hold_out: None,
    },
    Variant {
        name: "strip-symbols",
        setting: "`strip = \"symbols\"`",
        make: Make::Objcopy {
            from: "release",
            args: &["--strip-all"],
        },
        refused_with: Some("strip = \"symbols\""),
        hold_out: None,
    },
    Variant {
        name: "nightly-v0",
        setting: "default `--release`, nightly rustc (v0 mangling)",
        make: Make::Profile {
            profile: "release",
            toolchain: Some(NIGHTLY),
        },
        refused_with: None,
        hold_out: None,
    },
    Variant {
        name: "debian-rustc",
        setting: "default `--release`, Debian's rustc (`rustc-web`)",
        make: Make::Profile {
            profile: "release",
            toolchain: Some(DEBIAN),
        },
        refused_with: None,
        hold_out: None,
    },
    // A toolchain held out of the table: its worker is read through the rows of the others,
    // verified live. For nightly's, the only row of its niche rule, that is the other rows with
    // their tags re-placed by its rule (see README, "Any rustc").
    Variant {
        name: "hold-out-1.95",
        setting: "default `--release`; table without the rustc 1.95.0 row",
        make: Make::Profile {
            profile: "release",
            toolchain: None,
        },
        refused_with: None,
        hold_out: Some("1.95.0"),
    },
    Variant {
        name: "hold-out-1.96",
        setting: "default `--release`, Debian's rustc; table without the rustc 1.96.0 row",
        make: Make::Profile {
            profile: "release",
            toolchain: Some(DEBIAN),
        },
        refused_with: None,
        hold_out: Some("1.96.0"),
    },
    Variant {
        name: "hold-out-1.97",
        setting: "default `--release`, nightly rustc; table without the rustc 1.97.0-nightly row",
        make: Make::Profile {
            profile: "release",
            toolchain: Some(NIGHTLY),
        },
        refused_with: None,
        hold_out: Some("1.97.0-nightly"),
    },
];

/// The shipped layout table without `rustc`'s row, written for `--layout-table`.
fn table_without(rustc: &str) -> anyhow::Result<PathBuf> {
    let p = paths();
    let table = std::fs::read_to_string(p.root.join("observer/layouts.json"))?;
    let mut rows: Vec<serde_json::Value> = serde_json::from_str(&table)?;
    rows.retain(|r| r["rustc"] != rustc);
    let dir = p.root.join("target/e2e-logs/matrix");
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("table-without-{rustc}.json"));
    std::fs::write(&path, serde_json::to_string_pretty(&rows)?)?;
    Ok(path)
}

fn variant(name: &str) -> anyhow::Result<&'static Variant> {
    VARIANTS
        .iter()
        .find(|v| v.name == name)
        .with_context(|| format!("no variant {name}"))
}

fn binary_of(name: &str) -> anyhow::Result<PathBuf> {
    let fixtures = paths().fixtures;
    let variant = variant(name)?;
    Ok(match variant.make {
        Make::Profile { profile, toolchain } => worker_binary(toolchain, profile),
        // Under its own directory, keeping the file name (service.name defaults to it).
        Make::Objcopy { .. } => fixtures
            .join("target/derived")
            .join(name)
            .join("sample-worker"),
    })
}

/// Builds (or derives) the variant of this name; returns its binary.
pub fn make_variant(name: &str) -> anyhow::Result<PathBuf> {
    let variant = variant(name)?;
    make(variant)
}

/// Builds a hold-out variant; returns its binary and the rustc whose row it holds out.
pub fn make_hold_out(name: &str) -> anyhow::Result<(PathBuf, &'static str)> {
    let variant = variant(name)?;
    let rustc = variant
        .hold_out
        .with_context(|| format!("{name} holds no toolchain out"))?;
    Ok((make(variant)?, rustc))
}

fn make(variant: &Variant) -> anyhow::Result<PathBuf> {
    match variant.make {
        Make::Profile { profile, toolchain } => {
            build_worker(toolchain, profile)?;
        }
        Make::Objcopy { from, args } => {
            let source = binary_of(from)?;
            ensure!(
                source.is_file(),
                "{} is made from the {from} variant; build that first",
                variant.name
            );
            let out = binary_of(variant.name)?;
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir)?;
            }
            sh(Command::new("objcopy").args(args).arg(&source).arg(&out))?;
        }
    }
    binary_of(variant.name)
}

struct Row {
    name: &'static str,
    setting: &'static str,
    inspect: serde_json::Value,
    result: anyhow::Result<serde_json::Value>,
}

pub fn run(only: &[String]) -> anyhow::Result<()> {
    let p = paths();
    let selected: Vec<&Variant> = VARIANTS
        .iter()
        .filter(|v| only.is_empty() || only.iter().any(|o| o == v.name))
        .collect();
    ensure!(
        !selected.is_empty(),
        "no variant is named {only:?}; the variants are {}",
        VARIANTS
            .iter()
            .map(|v| v.name)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let temporal = crate::setup::temporal_cli()?;
    let mut rows = Vec::new();
    for variant in selected {
        let binary = make(variant)?;
        let table = variant.hold_out.map(table_without).transpose()?;
        let mut inspect = Command::new(&p.observer);
        if let Some(table) = &table {
            inspect.env("TEMPORAL_OBSERVER_LAYOUT_TABLE", table);
        }
        let inspect = inspect
            .args(["inspect", "--output", "json"])
            .arg(&binary)
            .output()
            .context("running temporal-observer inspect")?;
        let inspect: serde_json::Value =
            serde_json::from_slice(&inspect.stdout).unwrap_or_default();
        let result_file = p
            .root
            .join("target/e2e-logs/matrix")
            .join(format!("{}.json", variant.name));
        let _ = std::fs::remove_file(&result_file);
        let mut test = cargo();
        test.current_dir(&p.root)
            .env("TEMPORAL_CLI", &temporal)
            .env("E2E_VARIANT", variant.name)
            .env("SAMPLE_WORKER_VARIANT_BIN", &binary)
            .args([
                "test",
                "--release",
                "-p",
                "e2e",
                "--test",
                "build_variants",
                "--",
                "--exact",
                "the_build_variant_is_observed_exactly_or_refused",
            ]);
        if let Some(message) = variant.refused_with {
            test.env("E2E_EXPECT_REFUSAL", message);
        }
        if let Some(table) = &table {
            // The observer the test starts reads it from its environment.
            test.env("TEMPORAL_OBSERVER_LAYOUT_TABLE", table);
        }
        let result = sh(&mut test).and_then(|()| {
            let text = std::fs::read_to_string(&result_file)
                .with_context(|| format!("reading {}", result_file.display()))?;
            Ok(serde_json::from_str(&text)?)
        });
        rows.push(Row {
            name: variant.name,
            setting: variant.setting,
            inspect,
            result,
        });
    }
    let table = render(&rows);
    println!("{table}");
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.result.is_err())
        .map(|r| r.name)
        .collect();
    ensure!(failed.is_empty(), "variants failed: {}", failed.join(", "));
    Ok(())
}

fn render(rows: &[Row]) -> String {
    let text = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_string(),
        other => other.to_string(),
    };
    let mut out = String::from(
        "| variant | build setting | rustc | mangling | layout from | registers from | probes attached | result |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for row in rows {
        let registers = match &row.inspect["arguments_source"] {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(o) => o
                .get("table")
                .map(|t| format!("table ({})", text(&t["build"])))
                .unwrap_or_default(),
            _ => "-".into(),
        };
        let (probes, result) = match &row.result {
            Ok(r) => (text(&r["probes_attached"]), text(&r["result"])),
            Err(e) => ("-".into(), format!("FAILED: {e:#}")),
        };
        // What attaching used (a verified candidate is known only then), else what inspect said.
        let layout = row
            .result
            .as_ref()
            .ok()
            .and_then(|r| r["layout"].as_str().map(str::to_string))
            .unwrap_or_else(|| match &row.inspect["layout_source"] {
                serde_json::Value::Object(o) => o
                    .get("table")
                    .map(|t| format!("table row (rustc {})", text(&t["rustc"])))
                    .unwrap_or_default(),
                other => text(other),
            });
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
            row.name,
            row.setting,
            text(&row.inspect["rustc"]),
            text(&row.inspect["mangling"]),
            layout,
            registers,
            probes,
            result.replace('|', "\\|"),
        ));
    }
    out
}
