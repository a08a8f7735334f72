//! Serving the values for Prometheus to scrape (`--prometheus-listen`), from the same meter
//! provider as OTLP: the contract's names, `workflow_type` the only label.

use std::{convert::Infallible, net::SocketAddr};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use opentelemetry_sdk::metrics::MeterProviderBuilder;
use prometheus::{Encoder as _, Registry, TextEncoder};

use super::ExportError;

/// Adds a Prometheus reader to the provider and serves its registry at `http://ADDR/metrics`
/// (any path answers). Binds now, so that a taken address is an error here; serves on the
/// running tokio runtime.
pub(super) fn serve(
    builder: MeterProviderBuilder,
    addr: SocketAddr,
) -> Result<MeterProviderBuilder, ExportError> {
    let (builder, Scrape(registry)) = add_reader(builder)?;
    let listen = |source| ExportError::Listen { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(listen)?;
    listener.set_nonblocking(true).map_err(listen)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(listen)?;
    log::info!("serving Prometheus scrapes on http://{addr}/metrics");
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    log::warn!("accepting a Prometheus scrape on {addr} failed: {e}");
                    continue;
                }
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_: Request<hyper::body::Incoming>| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(scrape(&registry)) }
                });
                // One scrape per connection, closed after the answer (as Prometheus's own
                // exporters do): a client that reads to the end gets the end.
                if let Err(e) = http1::Builder::new()
                    .keep_alive(false)
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    log::debug!("a Prometheus scrape connection failed: {e}");
                }
            });
        }
    });
    Ok(builder)
}

/// A Prometheus registry fed by a meter provider's reader: what a scrape answers.
#[derive(Clone, Debug)]
pub struct Scrape(Registry);

impl Scrape {
    /// The registry's values in Prometheus's text format, as a scrape gets them.
    pub fn text(&self) -> Result<String, String> {
        let mut body = Vec::new();
        TextEncoder::new()
            .encode(&self.0.gather(), &mut body)
            .map_err(|e| e.to_string())?;
        String::from_utf8(body).map_err(|e| e.to_string())
    }
}

/// Adds a Prometheus reader to the provider, on a registry of its own.
pub(super) fn add_reader(
    builder: MeterProviderBuilder,
) -> Result<(MeterProviderBuilder, Scrape), ExportError> {
    let registry = Registry::new();
    // Names stay exactly as the contract spells them; no scope labels on the series.
    let exporter = opentelemetry_prometheus::exporter()
        .with_registry(registry.clone())
        .without_units()
        .without_counter_suffixes()
        .scope_info_enabled(false)
        .build()
        .map_err(|e| ExportError::Prometheus(e.to_string()))?;
    Ok((builder.with_reader(exporter), Scrape(registry)))
}

fn scrape(registry: &Registry) -> Response<Full<Bytes>> {
    let encoder = TextEncoder::new();
    let (status, body) = match Scrape(registry.clone()).text() {
        Ok(body) => (hyper::StatusCode::OK, body.into_bytes()),
        Err(e) => (hyper::StatusCode::INTERNAL_SERVER_ERROR, e.into_bytes()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(content_type) = encoder.format_type().parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, content_type);
    }
    response
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use crate::{
        export::{ExportSettings, Metrics},
        lifecycle::Update,
    };

    #[test]
    fn a_scrape_gets_the_contract_names_with_workflow_type_the_only_label() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let settings = ExportSettings {
            prometheus: Some(addr),
            ..ExportSettings::default()
        };
        let metrics = runtime
            .block_on(async { Metrics::new(&settings, 42, "worker", &[]) })
            .expect("serving");
        metrics.record(&Update::RunStarted {
            run_id: "r".into(),
            workflow_type: "Greet".into(),
        });
        let body = runtime.block_on(async {
            tokio::task::spawn_blocking(move || {
                let mut stream = std::net::TcpStream::connect(addr).expect("connect");
                write!(
                    stream,
                    "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .expect("request");
                let mut response = String::new();
                stream.read_to_string(&mut response).expect("response");
                response
            })
            .await
            .expect("scrape")
        });
        assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
        assert!(
            body.contains("compozy_temporal_workflow_started_total{workflow_type=\"Greet\"} 1"),
            "{body}"
        );
        // A taken address is an error when the session starts, not later.
        let again = runtime.block_on(async { Metrics::new(&settings, 42, "worker", &[]) });
        assert!(again.is_err());
    }
}
