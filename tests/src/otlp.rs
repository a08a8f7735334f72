//! A real OTLP metrics receiver for the tests, on a free loopback port: gRPC (tonic, the
//! collector's `MetricsService`) or HTTP/protobuf (`POST /v1/metrics`). It decodes every export
//! with the OpenTelemetry protobuf definitions and keeps the latest value of every series.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use opentelemetry_proto::tonic::{
    collector::metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value},
    metrics::v1::{ResourceMetrics, metric::Data, number_data_point},
};
use prost::Message as _;

/// Which OTLP transport the receiver speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Grpc,
    Http,
}

impl Transport {
    /// The value of `--otlp-protocol` for this transport.
    pub fn flag(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http/protobuf",
        }
    }
}

/// One data point's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    Double(f64),
    Histogram {
        count: u64,
        sum: f64,
        bounds: Vec<f64>,
        buckets: Vec<u64>,
    },
}

/// The latest value of every series seen, keyed by metric name and then by the series'
/// attributes (`key=value` pairs, sorted, joined by `,`).
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub series: BTreeMap<String, BTreeMap<String, Value>>,
    pub resource: BTreeMap<String, String>,
    pub exports: usize,
    /// The same, kept apart per resource (by its `process.pid`): what one observed process
    /// reported, and nothing of another's.
    pub processes: BTreeMap<String, Received>,
}

impl Received {
    /// The integer value of a counter or gauge for one workflow type ("" = no attributes).
    pub fn int(&self, metric: &str, workflow_type: &str) -> Option<i64> {
        match self
            .series
            .get(metric)?
            .get(&attributes_key(workflow_type))?
        {
            Value::Int(v) => Some(*v),
            _ => None,
        }
    }

    pub fn histogram(&self, metric: &str, workflow_type: &str) -> Option<(u64, f64, Vec<f64>)> {
        match self
            .series
            .get(metric)?
            .get(&attributes_key(workflow_type))?
        {
            Value::Histogram {
                count, sum, bounds, ..
            } => Some((*count, *sum, bounds.clone())),
            _ => None,
        }
    }

    /// Workflow types a metric has series for.
    pub fn workflow_types(&self, metric: &str) -> Vec<String> {
        self.series
            .get(metric)
            .map(|s| {
                s.keys()
                    .filter_map(|k| k.strip_prefix("workflow_type=").map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Every process's series summed, as a backend sums one metric over its resources: counters
    /// and gauges added, histograms' counts, sums and buckets added.
    pub fn summed(&self) -> Received {
        let mut sum = Received {
            exports: self.exports,
            ..Received::default()
        };
        for process in self.processes.values() {
            for (metric, series) in &process.series {
                let into = sum.series.entry(metric.clone()).or_default();
                for (attributes, value) in series {
                    match (into.get_mut(attributes), value) {
                        (None, value) => {
                            into.insert(attributes.clone(), value.clone());
                        }
                        (Some(Value::Int(total)), Value::Int(v)) => *total += v,
                        (Some(Value::Double(total)), Value::Double(v)) => *total += v,
                        (
                            Some(Value::Histogram {
                                count,
                                sum,
                                buckets,
                                ..
                            }),
                            Value::Histogram {
                                count: c,
                                sum: s,
                                buckets: b,
                                ..
                            },
                        ) => {
                            *count += c;
                            *sum += s;
                            for (total, more) in buckets.iter_mut().zip(b) {
                                *total += more;
                            }
                        }
                        (Some(total), value) => {
                            panic!(
                                "{metric}{{{attributes}}}: {total:?} and {value:?} differ in kind"
                            )
                        }
                    }
                }
            }
        }
        sum
    }

    fn absorb(&mut self, request: &ExportMetricsServiceRequest) {
        self.exports += 1;
        for resource_metrics in &request.resource_metrics {
            self.absorb_resource(resource_metrics);
            let pid = resource_metrics
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "process.pid")
                .map(|kv| render(kv.value.as_ref()))
                .unwrap_or_default();
            let process = self.processes.entry(pid).or_default();
            process.exports += 1;
            process.absorb_resource(resource_metrics);
        }
    }

    fn absorb_resource(&mut self, resource_metrics: &ResourceMetrics) {
        {
            if let Some(resource) = &resource_metrics.resource {
                for kv in &resource.attributes {
                    self.resource
                        .insert(kv.key.clone(), render(kv.value.as_ref()));
                }
            }
            for scope in &resource_metrics.scope_metrics {
                for metric in &scope.metrics {
                    let series = self.series.entry(metric.name.clone()).or_default();
                    match &metric.data {
                        Some(Data::Sum(sum)) => {
                            for p in &sum.data_points {
                                series.insert(key(&p.attributes), number(p.value));
                            }
                        }
                        Some(Data::Gauge(gauge)) => {
                            for p in &gauge.data_points {
                                series.insert(key(&p.attributes), number(p.value));
                            }
                        }
                        Some(Data::Histogram(h)) => {
                            for p in &h.data_points {
                                series.insert(
                                    key(&p.attributes),
                                    Value::Histogram {
                                        count: p.count,
                                        sum: p.sum.unwrap_or_default(),
                                        bounds: p.explicit_bounds.clone(),
                                        buckets: p.bucket_counts.clone(),
                                    },
                                );
                            }
                        }
                        _ => {}
                    }
                }
            }
        }
    }
}

fn number(value: Option<number_data_point::Value>) -> Value {
    match value {
        Some(number_data_point::Value::AsInt(v)) => Value::Int(v),
        Some(number_data_point::Value::AsDouble(v)) => Value::Double(v),
        None => Value::Int(0),
    }
}

fn render(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn key(attributes: &[KeyValue]) -> String {
    let mut pairs: Vec<String> = attributes
        .iter()
        .map(|kv| format!("{}={}", kv.key, render(kv.value.as_ref())))
        .collect();
    pairs.sort();
    pairs.join(",")
}

fn attributes_key(workflow_type: &str) -> String {
    if workflow_type.is_empty() {
        String::new()
    } else {
        format!("workflow_type={workflow_type}")
    }
}

/// A running receiver. It stops with the test process.
#[derive(Debug, Clone)]
pub struct Receiver {
    pub endpoint: String,
    pub transport: Transport,
    state: Arc<Mutex<Received>>,
    /// While set, every export fails (see [`Receiver::set_down`]).
    down: Arc<std::sync::atomic::AtomicBool>,
}

impl Receiver {
    pub fn start(transport: Transport) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the OTLP receiver")?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(Mutex::new(Received::default()));
        let shared = state.clone();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let down_flag = down.clone();
        match transport {
            Transport::Http => {
                thread::Builder::new()
                    .name("otlp-http".into())
                    .spawn(move || {
                        for stream in listener.incoming().flatten() {
                            let shared = shared.clone();
                            let down = down_flag.clone();
                            thread::spawn(move || {
                                let _ = serve_http(stream, &shared, &down);
                            });
                        }
                    })?;
            }
            Transport::Grpc => {
                listener.set_nonblocking(true)?;
                thread::Builder::new()
                    .name("otlp-grpc".into())
                    .spawn(move || {
                        let runtime = tokio::runtime::Builder::new_current_thread()
                            .enable_all()
                            .build();
                        let Ok(runtime) = runtime else { return };
                        runtime.block_on(async move {
                            let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                                return;
                            };
                            let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                            let service = MetricsServiceServer::new(GrpcService {
                                state: shared,
                                down: down_flag,
                            });
                            let _ = tonic::transport::Server::builder()
                                .add_service(service)
                                .serve_with_incoming(incoming)
                                .await;
                        });
                    })?;
            }
        }
        Ok(Self {
            endpoint,
            transport,
            state,
            down,
        })
    }

    /// Takes the endpoint down (or brings it back): while down, every connection is closed
    /// without an answer (HTTP) or every export gets UNAVAILABLE (gRPC), and nothing is recorded.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn received(&self) -> Received {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits until `check` holds for what was received.
    pub fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        check: impl Fn(&Received) -> bool,
    ) -> anyhow::Result<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let received = self.received();
            if check(&received) {
                return Ok(received);
            }
            if Instant::now() > deadline {
                bail!(
                    "the OTLP receiver did not get {what} within {timeout:?} ({} exports so far)",
                    received.exports
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

struct GrpcService {
    state: Arc<Mutex<Received>>,
    down: Arc<std::sync::atomic::AtomicBool>,
}

#[tonic::async_trait]
impl MetricsService for GrpcService {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        if self.down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(tonic::Status::unavailable("the receiver is down"));
        }
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .absorb(request.get_ref());
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

/// Serves OTLP/HTTP requests on one (keep-alive) connection.
fn serve_http(
    stream: TcpStream,
    state: &Mutex<Received>,
    down: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line)? == 0 {
            return Ok(());
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            reader.read_line(&mut header)?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        if down.load(std::sync::atomic::Ordering::SeqCst) {
            // As a crashed collector: the connection closes, no answer.
            return Ok(());
        }
        let (status, response) = if request_line.starts_with("POST /v1/metrics ") {
            match ExportMetricsServiceRequest::decode(body.as_slice()) {
                Ok(request) => {
                    state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .absorb(&request);
                    (
                        "200 OK",
                        ExportMetricsServiceResponse::default().encode_to_vec(),
                    )
                }
                Err(_) => ("400 Bad Request", Vec::new()),
            }
        } else {
            ("404 Not Found", Vec::new())
        };
        write!(
            writer,
            "HTTP/1.1 {status}\r\nContent-Type: application/x-protobuf\r\nContent-Length: {}\r\n\r\n",
            response.len()
        )?;
        writer.write_all(&response)?;
        writer.flush()?;
    }
}
