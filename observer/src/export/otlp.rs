//! Pushing the values over OTLP (gRPC or HTTP/protobuf), configured as OpenTelemetry says:
//! `OTEL_EXPORTER_OTLP_[METRICS_]ENDPOINT`, `OTEL_EXPORTER_OTLP_[METRICS_]PROTOCOL`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_METRIC_EXPORT_INTERVAL`; flags win over them.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use opentelemetry_otlp::{MetricExporter, Protocol, WithExportConfig as _};
use opentelemetry_sdk::{
    error::OTelSdkResult,
    metrics::{
        MeterProviderBuilder, PeriodicReader, Temporality, data::ResourceMetrics,
        exporter::PushMetricExporter,
    },
};

use super::{ExportError, ExportSettings, Transport};

/// The transport the environment asks for, validated (the exporter would silently fall back).
fn transport_from_env(
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<Transport>, ExportError> {
    for name in [
        "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(value) = var(name) {
            return value
                .parse()
                .map(Some)
                .map_err(|_| ExportError::Protocol { var: name, value });
        }
    }
    Ok(None)
}

/// Adds the periodic OTLP reader to the provider, with the transport and endpoint resolved from
/// the flags and OTEL_*.
pub(super) fn add_reader(
    builder: MeterProviderBuilder,
    config: &ExportSettings,
) -> Result<MeterProviderBuilder, ExportError> {
    let transport = match config.transport {
        Some(t) => Some(t),
        None => transport_from_env(|name| std::env::var(name).ok())?,
    };
    let exporter = match transport.unwrap_or(Transport::HttpProtobuf) {
        Transport::Grpc => {
            let builder = MetricExporter::builder()
                .with_tonic()
                .with_protocol(Protocol::Grpc);
            match &config.endpoint {
                Some(endpoint) => builder.with_endpoint(endpoint.clone()).build()?,
                None => builder.build()?,
            }
        }
        Transport::HttpProtobuf => {
            let builder = MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary);
            match &config.endpoint {
                // The HTTP exporter takes the full URL of the metrics path.
                Some(endpoint) => builder.with_endpoint(http_metrics_url(endpoint)).build()?,
                None => builder.build()?,
            }
        }
    };
    let target = match (
        &config.endpoint,
        transport.unwrap_or(Transport::HttpProtobuf),
    ) {
        (Some(endpoint), _) => endpoint.clone(),
        (None, Transport::Grpc) => {
            "the OTLP/gRPC endpoint from OTEL_* (default localhost:4317)".into()
        }
        (None, Transport::HttpProtobuf) => {
            "the OTLP/HTTP endpoint from OTEL_* (default localhost:4318)".into()
        }
    };
    let mut reader = PeriodicReader::builder(Logged {
        inner: exporter,
        target,
        failing: AtomicBool::new(false),
    });
    if let Some(interval) = config.interval {
        reader = reader.with_interval(interval);
    }
    Ok(builder.with_reader(reader.build()))
}

/// Logs the first failed export of a streak, and the recovery, so that an unreachable collector
/// is visible without flooding the log (the SDK itself reports nothing with our logger).
#[derive(Debug)]
struct Logged<E> {
    inner: E,
    target: String,
    failing: AtomicBool,
}

impl<E: PushMetricExporter> PushMetricExporter for Logged<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let result = self.inner.export(metrics).await;
        match &result {
            Err(e) if !self.failing.swap(true, Ordering::Relaxed) => {
                log::warn!(
                    "exporting metrics to {} failed: {e}; retrying every interval",
                    self.target
                );
            }
            Ok(()) if self.failing.swap(false, Ordering::Relaxed) => {
                log::info!("exporting metrics to {} works again", self.target);
            }
            _ => {}
        }
        result
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

/// `http://host:4318` -> `http://host:4318/v1/metrics`; a URL with a path is kept as given.
pub fn http_metrics_url(endpoint: &str) -> String {
    let trimmed = endpoint.trim_end_matches('/');
    let after_scheme = trimmed
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(trimmed);
    if after_scheme.contains('/') {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/metrics")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_get_the_metrics_path() {
        assert_eq!(
            http_metrics_url("http://127.0.0.1:4318"),
            "http://127.0.0.1:4318/v1/metrics"
        );
        assert_eq!(
            http_metrics_url("http://127.0.0.1:4318/"),
            "http://127.0.0.1:4318/v1/metrics"
        );
        assert_eq!(
            http_metrics_url("http://h:1/custom/path"),
            "http://h:1/custom/path"
        );
    }
    #[test]
    fn the_protocol_comes_from_the_environment_and_a_bad_one_is_refused_with_its_name() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.to_string())
            }
        };
        assert_eq!(transport_from_env(env(&[])).expect("unset"), None);
        assert_eq!(
            transport_from_env(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])).expect("grpc"),
            Some(Transport::Grpc)
        );
        // The metrics-specific variable wins over the general one.
        assert_eq!(
            transport_from_env(env(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "http/protobuf"),
            ]))
            .expect("http"),
            Some(Transport::HttpProtobuf)
        );
        let err = transport_from_env(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]))
            .expect_err("refused");
        assert_eq!(
            err.to_string(),
            "OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\" is not a supported OTLP protocol; use \
             `grpc` or `http/protobuf`"
        );
    }
}
