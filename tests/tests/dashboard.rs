//! The Grafana dashboard and the alert rules in `deploy/`, evaluated by a real Prometheus
//! (Debian's, installed by `cargo xtask setup`) that scrapes a real observer attached to the
//! sample worker: every panel's query and every rule through Prometheus's HTTP API, the values
//! with a ground truth against the Temporal server's record of the same runs.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use e2e::{
    DevServer, Env, GroundTruth, Guard, Mix, Observer, RunStatus,
    accuracy::{ENDS, STARTED, expected},
    drive, free_port, start_worker, unique,
};
use serde_json::Value;

const DASHBOARD: &str = "deploy/grafana/temporal-observer.json";
const ALERTS: &str = "deploy/prometheus/alerts.yaml";
const ALERT_TESTS: &str = "deploy/prometheus/alerts_test.yaml";
/// The dashboard's template variables, each set to "All" as a user first sees it.
const ALL: &str = ".*";
/// `$__rate_interval` as Grafana would make it of a 1 s scrape interval (at least four
/// samples).
const RATE_INTERVAL: &str = "15s";
/// The observed worker's pod, as its resource attributes say.
const POD: &str = "orders-worker-7d9f";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = PathBuf::from("/usr/bin").join(name);
    ensure!(
        path.is_file(),
        "missing {} (Debian's `prometheus` package; `cargo xtask setup` installs it)",
        path.display()
    );
    Ok(path)
}

/// A Prometheus server of its own, on a free loopback port, scraping `target` every second and
/// evaluating `rules` every second.
struct Prometheus {
    _process: Guard,
    base: String,
}

impl Prometheus {
    fn start(env: &Env, target: &str, rules: &Path) -> anyhow::Result<Self> {
        let dir = env.logs.join("prometheus");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: temporal-observer\n    static_configs:\n      \
                 - targets: ['{target}']\n",
                rules.display()
            ),
        )?;
        let addr = format!("127.0.0.1:{}", free_port()?);
        let log_path = env.logs.join("prometheus.log");
        let log = std::fs::File::create(&log_path)?;
        let mut command = Command::new(tool("prometheus")?);
        command
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let process = Guard::spawn("prometheus", command, log_path)?;
        let prometheus = Self {
            _process: process,
            base: format!("http://{addr}"),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(prometheus.get("/-/ready", &[]), Ok((200, _))) {
            ensure!(
                Instant::now() < deadline,
                "Prometheus did not become ready in 30 s; see {}",
                env.logs.join("prometheus.log").display()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(prometheus)
    }

    /// `GET path?params`: the status and the body (an error status is not an error here, so
    /// that Prometheus's own message about a query reaches the test's).
    fn get(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<(u16, String)> {
        let mut request = ureq::get(format!("{}{path}", self.base))
            .config()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(30)))
            .build();
        for (key, value) in params {
            request = request.query(*key, *value);
        }
        let mut response = request.call().with_context(|| format!("GET {path}"))?;
        let status = response.status().as_u16();
        Ok((status, response.body_mut().read_to_string()?))
    }

    /// An API call's `data`, after checking its status.
    fn api(&self, path: &str, params: &[(&str, &str)]) -> anyhow::Result<Value> {
        let (_, body) = self.get(path, params)?;
        let value: Value =
            serde_json::from_str(&body).with_context(|| format!("{path} {params:?}: {body}"))?;
        ensure!(value["status"] == "success", "{path} {params:?}: {body}");
        Ok(value["data"].clone())
    }

    /// An instant query's series: labels and value.
    fn query(&self, expr: &str) -> anyhow::Result<Vec<Series>> {
        let data = self.api("/api/v1/query", &[("query", expr)])?;
        ensure!(data["resultType"] == "vector", "{expr}: {data}");
        series(&data["result"], |s| s["value"][1].as_str())
    }

    /// A range query's series over `start..end` (Unix seconds), one point a second; each
    /// series' values.
    fn query_range(&self, expr: &str, start: f64, end: f64) -> anyhow::Result<Vec<Vec<f64>>> {
        let (start, end) = (format!("{start:.3}"), format!("{end:.3}"));
        let data = self.api(
            "/api/v1/query_range",
            &[
                ("query", expr),
                ("start", &start),
                ("end", &end),
                ("step", "1"),
            ],
        )?;
        ensure!(data["resultType"] == "matrix", "{expr}: {data}");
        data["result"]
            .as_array()
            .context("no result")?
            .iter()
            .map(|s| {
                s["values"]
                    .as_array()
                    .context("no values")?
                    .iter()
                    .map(|v| Ok(v[1].as_str().context("no value")?.parse::<f64>()?))
                    .collect()
            })
            .collect()
    }

    /// Waits until Prometheus has scraped every end the server recorded.
    fn wait_for_ends(&self, ends: &BTreeMap<(String, String), f64>) -> anyhow::Result<()> {
        let want: f64 = ends.values().sum();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let got: f64 = self
                .query(&format!("sum({{__name__=~\"{}\"}})", ENDS.join("|")))?
                .iter()
                .map(|s| s.value)
                .sum();
            if got == want {
                return Ok(());
            }
            ensure!(
                Instant::now() < deadline,
                "Prometheus has {got} ends after 30 s, the server {want}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Grafana's `label_values(selector, label)`.
    fn label_values(&self, selector: &str, label: &str) -> anyhow::Result<BTreeSet<String>> {
        let data = self.api(
            &format!("/api/v1/label/{label}/values"),
            &[("match[]", selector)],
        )?;
        Ok(data
            .as_array()
            .context("not a list")?
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect())
    }
}

#[derive(Debug, Clone)]
struct Series {
    labels: BTreeMap<String, String>,
    value: f64,
}

fn series(result: &Value, value: impl Fn(&Value) -> Option<&str>) -> anyhow::Result<Vec<Series>> {
    result
        .as_array()
        .context("no result")?
        .iter()
        .map(|s| {
            let labels = s["metric"]
                .as_object()
                .context("no labels")?
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                .collect();
            let value = value(s).context("no value")?.parse()?;
            Ok(Series { labels, value })
        })
        .collect()
}

/// A panel's query, with Grafana's variables replaced as the dashboard first shows them.
#[derive(Debug)]
struct Query {
    panel: String,
    ref_id: String,
    expr: String,
    legend: String,
    /// Whether the panel draws it over time (else one value per series).
    range: bool,
}

fn substitute(expr: &str, variables: &BTreeSet<String>) -> anyhow::Result<String> {
    let mut out = expr
        .replace("$__rate_interval", RATE_INTERVAL)
        .replace("$__range", "1h");
    for name in variables {
        out = out.replace(&format!("${name}"), ALL);
    }
    ensure!(!out.contains('$'), "an unknown variable in {expr}");
    Ok(out)
}

fn dashboard() -> anyhow::Result<Value> {
    let path = root().join(DASHBOARD);
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(serde_json::from_str(&text)?)
}

/// Every panel's queries, after checking what Grafana needs to import and provision the
/// dashboard: unique panel ids and a grid position, every query on the `datasource` variable,
/// every `$variable` one the dashboard defines.
fn panel_queries(dashboard: &Value) -> anyhow::Result<Vec<Query>> {
    ensure!(dashboard["uid"].is_string() && dashboard["title"].is_string());
    ensure!(dashboard["schemaVersion"].as_u64().unwrap_or(0) >= 36);
    let variables: BTreeSet<String> = dashboard["templating"]["list"]
        .as_array()
        .context("no variables")?
        .iter()
        .filter_map(|v| v["name"].as_str().map(str::to_string))
        .filter(|name| name != "datasource")
        .collect();
    let mut ids = BTreeSet::new();
    let mut queries = Vec::new();
    for panel in dashboard["panels"].as_array().context("no panels")? {
        let title = panel["title"].as_str().context("a panel without a title")?;
        ensure!(
            ids.insert(panel["id"].as_u64().context("a panel without an id")?),
            "panel id of {title} repeated"
        );
        ensure!(
            panel["gridPos"]["w"].as_u64().is_some(),
            "{title}: no gridPos"
        );
        if panel["type"] == "row" {
            continue;
        }
        ensure!(
            panel["datasource"]["uid"] == "${datasource}",
            "{title}: not on the datasource variable"
        );
        let targets = panel["targets"].as_array().context("no targets")?;
        ensure!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            ensure!(
                target["datasource"]["uid"] == "${datasource}",
                "{title}: a query not on the datasource variable"
            );
            queries.push(Query {
                panel: title.to_string(),
                ref_id: target["refId"].as_str().context("no refId")?.to_string(),
                expr: substitute(target["expr"].as_str().context("no expr")?, &variables)?,
                legend: target["legendFormat"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                range: target["range"].as_bool().unwrap_or(true),
            });
        }
    }
    Ok(queries)
}

/// The labels a legend format such as `{{workflow_type}} p50` shows.
fn legend_labels(legend: &str) -> Vec<String> {
    legend
        .split("{{")
        .skip(1)
        .filter_map(|part| {
            part.split_once("}}")
                .map(|(label, _)| label.trim().to_string())
        })
        .collect()
}

/// Per workflow type: value, from series labelled by it.
fn by_type(series: &[Series]) -> BTreeMap<String, f64> {
    series
        .iter()
        .filter_map(|s| Some((s.labels.get("workflow_type")?.clone(), s.value)))
        .collect()
}

/// An end counter's state, as the dashboard's legends and the recording rule name it.
fn state_of(metric: &str) -> &str {
    metric
        .trim_start_matches("compozy_temporal_workflow_")
        .trim_end_matches("_total")
}

/// Ended runs per workflow type and end state, as the server records them.
fn ends_by_state(truth: &GroundTruth) -> BTreeMap<(String, String), f64> {
    let mut ends = BTreeMap::new();
    for (metric, per_type) in expected(truth) {
        if metric == STARTED {
            continue;
        }
        for (ty, count) in per_type {
            ends.insert((ty, state_of(metric).to_string()), count as f64);
        }
    }
    ends
}

fn assert_close(
    what: &str,
    got: &BTreeMap<String, f64>,
    want: &BTreeMap<String, f64>,
    tolerance: f64,
) {
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>(),
        "{what}: {got:?} against the server's {want:?}"
    );
    for (ty, want_value) in want {
        let got_value = got[ty];
        assert!(
            (got_value - want_value).abs() <= tolerance,
            "{what} of {ty}: {got_value} against the server's {want_value}"
        );
    }
}

#[test]
fn dashboard_panels_and_alert_rules_equal_the_servers_record() -> anyhow::Result<()> {
    let env = Env::require("dashboard")?;
    let promtool = tool("promtool")?;
    // The rule files as Prometheus's own checker and unit tests see them (the unit tests
    // exercise each `for:` and threshold on synthetic series).
    for args in [
        vec!["check", "rules", ALERTS],
        vec!["test", "rules", ALERT_TESTS],
    ] {
        let out = Command::new(&promtool)
            .args(&args)
            .current_dir(root())
            .output()?;
        ensure!(
            out.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dashboard = dashboard()?;
    let queries = panel_queries(&dashboard)?;

    let server = DevServer::start(&env)?;
    let task_queue = unique("dashboard");
    let worker = start_worker(&env, &server, &task_queue, &[])?;
    let scrape = format!("127.0.0.1:{}", free_port()?);
    // A pod name among the resource attributes, as `watch` gives a worker in Kubernetes: the
    // dashboard's pod selector reads it from `target_info`.
    let observer = Observer::attach_with_env(
        &env,
        worker.pid(),
        &["--no-export", "--prometheus-listen", &scrape],
        &[("OTEL_RESOURCE_ATTRIBUTES", &format!("k8s.pod.name={POD}"))],
    )?;
    let prometheus = Prometheus::start(&env, &scrape, &root().join(ALERTS))?;
    let started_at = now();
    // Every end state, and a type that fails often enough for the failure-ratio alert (at
    // least 3 ended runs of a type, more than 10 % of them failed). Twice: the driver starts a
    // batch's runs at once, so each series appears with its first scrape at its batch's count,
    // and a rate sees only the increments after a series' first sample (as in production,
    // where the series exist long before): the second batch is what the rate panels draw.
    let mix = Mix {
        fail: 4,
        ..Mix::every_end_state()
    };
    let mut truth = drive(&env, &server, &task_queue, &task_queue, &mix)?;
    prometheus.wait_for_ends(&ends_by_state(&truth))?;
    let second = drive(&env, &server, &task_queue, &unique("dashboard-again"), &mix)?;
    truth.runs.extend(second.runs);
    let ends = ends_by_state(&truth);
    prometheus.wait_for_ends(&ends)?;
    // Two more scrapes and rule evaluations on the final numbers.
    std::thread::sleep(Duration::from_secs(3));
    let ended_at = now();

    // The variables, as Grafana resolves them.
    let variables: BTreeMap<&str, &str> = dashboard["templating"]["list"]
        .as_array()
        .context("no variables")?
        .iter()
        .filter_map(|v| Some((v["name"].as_str()?, v["definition"].as_str()?)))
        .collect();
    let types: BTreeSet<String> = truth.runs.iter().map(|r| r.workflow_type.clone()).collect();
    let resolve = |name: &str| -> anyhow::Result<BTreeSet<String>> {
        let definition = variables.get(name).context("no such variable")?;
        let definition = substitute(
            definition,
            &variables.keys().map(|k| k.to_string()).collect(),
        )?;
        if let Some(args) = definition
            .strip_prefix("label_values(")
            .and_then(|d| d.strip_suffix(')'))
        {
            let (selector, label) = args
                .rsplit_once(',')
                .context("label_values(selector, label)")?;
            prometheus.label_values(selector.trim(), label.trim())
        } else if let Some(query) = definition
            .strip_prefix("query_result(")
            .and_then(|d| d.strip_suffix(')'))
        {
            // The variable's regex takes the `instance` label out of each result.
            Ok(prometheus
                .query(query)?
                .into_iter()
                .filter_map(|s| s.labels.get("instance").cloned())
                .collect())
        } else {
            bail!("{name}: a variable query of an unknown kind: {definition}")
        }
    };
    assert_eq!(
        resolve("job")?,
        BTreeSet::from(["temporal-observer".to_string()])
    );
    assert_eq!(resolve("instance")?, BTreeSet::from([scrape.clone()]));
    assert_eq!(resolve("pod")?, BTreeSet::from([POD.to_string()]));
    assert_eq!(resolve("workflow_type")?, types);

    // Every query Prometheus accepts; the ones with a ground truth equal the server's record,
    // the rest carry the labels their legends show and, drawn over the workload, show it.
    let started: BTreeMap<String, f64> = expected(&truth)[STARTED]
        .iter()
        .map(|(ty, n)| (ty.clone(), *n as f64))
        .collect();
    let ended_by_type = |state: Option<&str>| -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for ((ty, s), n) in &ends {
            if state.is_none_or(|state| state == s) {
                *out.entry(ty.clone()).or_insert(0.0) += n;
            }
        }
        out
    };
    let ratio = |state: &str| -> BTreeMap<String, f64> {
        let of_state = ended_by_type(Some(state));
        ended_by_type(None)
            .into_iter()
            .map(|(ty, n)| (ty.clone(), of_state.get(&ty).copied().unwrap_or(0.0) / n))
            .collect()
    };
    let mean_duration: BTreeMap<String, f64> = types
        .iter()
        .map(|ty| {
            let durations: Vec<f64> = truth
                .runs
                .iter()
                .filter(|r| &r.workflow_type == ty)
                .map(|r| (r.close_time_unix_nanos - r.start_time_unix_nanos) as f64 / 1e9)
                .collect();
            (
                ty.clone(),
                durations.iter().sum::<f64>() / durations.len() as f64,
            )
        })
        .collect();
    let mut exact = 0;
    for query in &queries {
        let what = format!("{} ({})", query.panel, query.ref_id);
        let result = prometheus
            .query(&query.expr)
            .with_context(|| format!("{what}: {}", query.expr))?;
        let labels = legend_labels(&query.legend);
        for series in &result {
            for label in &labels {
                assert!(
                    series.labels.contains_key(label),
                    "{what}: a series without `{label}`, which its legend shows: {series:?}"
                );
            }
        }
        let values = by_type(&result);
        let single = || -> f64 { result.first().map(|s| s.value).unwrap_or(f64::NAN) };
        match (query.panel.as_str(), query.ref_id.as_str()) {
            ("End states since the observer started", "A") => {
                assert_close(&what, &values, &started, 0.0);
                exact += 1;
            }
            ("End states since the observer started", r) => {
                // Refs B..F are the end counters, in `ENDS`' order.
                let state = state_of(ENDS[(r.as_bytes()[0] - b'B') as usize]);
                assert_close(&what, &values, &ended_by_type(Some(state)), 0.0);
                exact += 1;
            }
            ("Failure and timeout ratios since the observer started", r) => {
                let state = if r == "A" { "failed" } else { "timed_out" };
                assert_close(&what, &values, &ratio(state), 1e-9);
                exact += 1;
            }
            ("Mean duration since the observer started", _) => {
                // The observer's duration of each run is within 50 ms of the server's.
                assert_close(&what, &values, &mean_duration, 0.05);
                exact += 1;
            }
            ("Workers running and configured", _) => {
                assert_eq!(single(), 1.0, "{what}: one worker runs, one is configured");
                exact += 1;
            }
            ("Open runs", "A") => {
                assert_eq!(single(), 0.0, "{what}: every run ended");
                exact += 1;
            }
            ("Open runs", _) => {
                assert_eq!(
                    single(),
                    0.0,
                    "{what}: no run was terminated, so none expired"
                );
                exact += 1;
            }
            ("Records lost or not read", _) => {
                assert_eq!(single(), 0.0, "{what}: nothing was lost in this run");
                exact += 1;
            }
            ("Targets and probes", "A") => {
                assert_eq!(single(), 1.0, "{what}: one worker observed");
                exact += 1;
            }
            _ => {
                assert!(!result.is_empty(), "{what}: no data: {}", query.expr);
                if query.range {
                    // Over the workload, the panel draws something: a finite value, and one
                    // above zero where the workload made one (rates of runs, durations).
                    let drawn = prometheus.query_range(&query.expr, started_at, ended_at)?;
                    let finite: Vec<f64> = drawn
                        .iter()
                        .flatten()
                        .copied()
                        .filter(|v| v.is_finite())
                        .collect();
                    assert!(!finite.is_empty(), "{what}: nothing drawn: {}", query.expr);
                    let quiet = query.panel.contains("lost");
                    assert!(
                        quiet || finite.iter().any(|v| *v > 0.0),
                        "{what}: only zeros drawn over the workload: {}",
                        query.expr
                    );
                }
            }
        }
    }
    assert!(
        exact >= 10,
        "{exact} queries checked against a ground truth"
    );

    // The rules: each evaluated without error; the recorded ends equal the server's; the
    // alerts this workload must raise are active (a `for:` keeps the failure ratio pending;
    // promtool's tests above show it firing after it), the others are not.
    let groups = prometheus.api("/api/v1/rules", &[])?;
    let rules: Vec<&Value> = groups["groups"]
        .as_array()
        .context("no rule groups")?
        .iter()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .collect();
    ensure!(rules.len() == 6, "{} rules loaded: {groups}", rules.len());
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "{rule}");
    }
    let recorded =
        prometheus.query("job_workflow_type_state:compozy_temporal_workflow_ended:delta10m")?;
    let recorded: BTreeMap<(String, String), f64> = recorded
        .iter()
        .filter(|s| s.value != 0.0)
        .filter_map(|s| {
            Some((
                (
                    s.labels.get("workflow_type")?.clone(),
                    s.labels.get("state")?.clone(),
                ),
                s.value,
            ))
        })
        .collect();
    assert_eq!(recorded, ends, "the recorded ends per type and state");

    let failing: BTreeSet<String> = ratio("failed")
        .into_iter()
        .filter(|(ty, r)| *r > 0.10 && ended_by_type(None)[ty] >= 3.0)
        .map(|(ty, _)| ty)
        .collect();
    let timing_out: BTreeSet<String> = ended_by_type(Some("timed_out")).into_keys().collect();
    ensure!(
        !failing.is_empty() && !timing_out.is_empty(),
        "the workload raises no alert"
    );
    // Each alert's expression, queried: exactly the series the server's record calls for.
    let must_fire: BTreeMap<&str, &BTreeSet<String>> = BTreeMap::from([
        ("TemporalWorkflowFailureRatioHigh", &failing),
        ("TemporalWorkflowTimeouts", &timing_out),
    ]);
    let none = BTreeSet::new();
    for rule in rules.iter().filter(|r| r["type"] == "alerting") {
        let name = rule["name"].as_str().context("an alert without a name")?;
        let expr = rule["query"].as_str().context("an alert without a query")?;
        let raised: BTreeSet<String> = prometheus
            .query(expr)?
            .into_iter()
            .map(|s| s.labels.get("workflow_type").cloned().unwrap_or_default())
            .collect();
        let want = must_fire.get(name).copied().unwrap_or(&none);
        assert_eq!(&raised, want, "{name}: {expr}");
    }
    // The alerts themselves: the timeouts fire at once; the failure ratio fires once it has
    // held for its `for:` (2 minutes); the rest stay quiet.
    let alerting = |state: &str| -> anyhow::Result<BTreeMap<String, BTreeSet<String>>> {
        let alerts = prometheus.api("/api/v1/alerts", &[])?;
        let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for alert in alerts["alerts"].as_array().into_iter().flatten() {
            if alert["state"] == state || state.is_empty() {
                out.entry(
                    alert["labels"]["alertname"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
                .or_default()
                .insert(
                    alert["labels"]["workflow_type"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                );
            }
        }
        Ok(out)
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let firing = loop {
        let firing = alerting("firing")?;
        if firing.contains_key("TemporalWorkflowFailureRatioHigh") {
            break firing;
        }
        ensure!(
            Instant::now() < deadline,
            "TemporalWorkflowFailureRatioHigh did not fire in 3 minutes: {:?}",
            alerting("")?
        );
        std::thread::sleep(Duration::from_secs(2));
    };
    let want: BTreeMap<String, BTreeSet<String>> = must_fire
        .iter()
        .map(|(name, types)| (name.to_string(), (*types).clone()))
        .collect();
    assert_eq!(firing, want, "the firing alerts");
    assert_eq!(alerting("")?, want, "every active alert");
    // Sanity of the scenario itself: the server ran every end state.
    for status in [
        RunStatus::Completed,
        RunStatus::Failed,
        RunStatus::Canceled,
        RunStatus::TimedOut,
        RunStatus::ContinuedAsNew,
    ] {
        ensure!(
            truth.runs.iter().any(|r| r.status == status),
            "no {status:?} run"
        );
    }

    let (status, _, log) = observer.stop()?;
    assert!(status.success(), "{log}");
    drop(worker);
    Ok(())
}

fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
