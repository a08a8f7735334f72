//! One build of the sample worker observed end to end: the accuracy check of the metric tests
//! (exact counts against the server, durations within 50 ms), or for a build that cannot be
//! observed, a refusal that says what to change.
//!
//! `cargo xtask matrix` runs this once per variant, naming it in `E2E_VARIANT` and pointing
//! `SAMPLE_WORKER_VARIANT_BIN` at its binary; it reads the result each run writes. Run plainly
//! (as CI does) it checks the fat-LTO build, whose probe plan differs most from the default's.

use std::path::PathBuf;

use anyhow::Context as _;
use e2e::{
    DevServer, Env, Mix,
    accuracy::{assert_matches_server, observe_binary},
    fixture_worker,
    otlp::Transport,
    run_observer, start_worker_binary, unique,
};

#[test]
fn the_build_variant_is_observed_exactly_or_refused() -> anyhow::Result<()> {
    let variant = std::env::var("E2E_VARIANT").unwrap_or_else(|_| "lto".into());
    let refusal = std::env::var("E2E_EXPECT_REFUSAL").ok();
    let binary = fixture_worker(&variant)?;
    let env = Env::require(&format!("variant-{variant}"))?;
    // What `inspect` says before attaching agrees with what attaching does.
    let inspect = std::process::Command::new(&env.observer)
        .args(["inspect", "--output", "json"])
        .arg(&binary)
        .output()?;
    let report: serde_json::Value = serde_json::from_slice(&inspect.stdout)?;
    assert_eq!(report["sdk_core"], "0.10.1", "{report}");
    assert!(
        report["rustc"]
            .as_str()
            .is_some_and(|r| r.starts_with("1.")),
        "{report}"
    );
    match &refusal {
        Some(must_say) => {
            assert!(!inspect.status.success(), "{report}");
            assert!(
                report["refused"]
                    .as_str()
                    .is_some_and(|r| r.contains(must_say.as_str())),
                "{report}"
            );
        }
        None => {
            assert!(inspect.status.success(), "{report}");
            assert!(
                report["probes"].as_array().is_some_and(|p| !p.is_empty()),
                "{report}"
            );
            assert!(!report["layout_source"].is_null(), "{report}");
        }
    }
    let result = match refusal {
        Some(must_say) => refused(&env, &binary, &must_say)?,
        None => observed_exactly(&env, &binary)?,
    };
    let path = result_path(&variant)?;
    std::fs::write(&path, serde_json::to_string_pretty(&result)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn observed_exactly(env: &Env, binary: &std::path::Path) -> anyhow::Result<serde_json::Value> {
    let outcome = observe_binary(env, binary, Transport::Grpc, &[], &Mix::every_end_state())?;
    assert_matches_server(&outcome);
    // After a live decision, the chosen candidate's probes stay.
    let stayed = outcome.log.lines().find_map(|l| {
        l.split_once("probes are detached (")?
            .1
            .split(' ')
            .next()?
            .parse::<u32>()
            .ok()
    });
    let attached = stayed
        .into_iter()
        .chain(outcome.log.lines().filter_map(|l| {
            l.split("attached ")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<u32>()
                .ok()
        }))
        .next()
        .context("the observer's log has no 'attached N probes' line")?;
    let registers = outcome
        .log
        .lines()
        .find_map(|l| l.split("argument registers from ").nth(1))
        .unwrap_or("?")
        .to_string();
    // `layout from <source>`, or for a candidate the live records picked, `layout verified
    // after N records: <source>`.
    let source = |text: &str| {
        text.split(", argument registers")
            .next()
            .unwrap_or_default()
            .to_string()
    };
    let layout = outcome
        .log
        .lines()
        .find_map(|l| {
            if let Some((_, rest)) = l.split_once("layout verified after ") {
                let (records, row) = rest.split_once(" records: ")?;
                Some(format!(
                    "verified candidate: {} (after {records} records)",
                    source(row)
                ))
            } else {
                l.split_once(": layout from ").map(|(_, rest)| source(rest))
            }
        })
        .unwrap_or_else(|| "?".into());
    Ok(serde_json::json!({
        "probes_attached": attached,
        "layout": layout,
        "registers": registers,
        "runs": outcome.truth.runs.len(),
        "result": format!("exact ({} runs, every end state)", outcome.truth.runs.len()),
    }))
}

fn refused(
    env: &Env,
    binary: &std::path::Path,
    must_say: &str,
) -> anyhow::Result<serde_json::Value> {
    let server = DevServer::start(env)?;
    let worker = start_worker_binary(env, binary, &server, &unique("refused"), &[])?;
    let (status, stderr) = run_observer(env, &["attach", "--pid", &worker.pid().to_string()])?;
    assert!(!status.success(), "attached to a build it must refuse");
    let message = stderr
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or_default()
        .to_string();
    assert!(message.contains(must_say), "{stderr}");
    Ok(serde_json::json!({
        "probes_attached": 0,
        "registers": "-",
        "runs": 0,
        "result": format!("refused: {message}"),
    }))
}

fn result_path(variant: &str) -> anyhow::Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/e2e-logs/matrix");
    std::fs::create_dir_all(&dir)?;
    Ok(dir.join(format!("{variant}.json")))
}
