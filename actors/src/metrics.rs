//! Prometheus metrics for worker pods: the exporter of the counters dtasks records through
//! the `metrics` facade ([`dtasks::metrics`]), served over HTTP.

use std::net::SocketAddr;

use dtasks::Error;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

/// The environment variable that names the address to serve metrics on
/// (`0.0.0.0:9464`, say); [`serve_prometheus_from_env`] reads it.
pub const METRICS_ADDR_ENV: &str = "DTASKS_METRICS_ADDR";

/// Counter: consumers of a pod restarted after their loop failed.
pub const RESTARTS: &str = "dtasks_pod_restarts_total";

/// Buckets of the duration histograms, in seconds: 100 µs to 30 s.
const SECONDS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0, 30.0,
];

/// Installs the Prometheus recorder as the process's `metrics` recorder and serves its
/// text format at `http://{addr}/` (any path) from a task of the current tokio runtime.
/// Durations (`*_seconds`) are histograms with buckets from 100 µs to 30 s.
///
/// Fails with [`Error::is_bad_input`] when a recorder is installed already or the address
/// cannot be bound.
pub fn serve_prometheus(addr: SocketAddr) -> Result<(), Error> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS)
        .map_err(|e| Error::invalid(format!("metrics buckets: {e}")))?
        .install()
        .map_err(|e| Error::invalid(format!("serving metrics on {addr}: {e}")))
}

/// [`serve_prometheus`] on the address in `DTASKS_METRICS_ADDR`, when it is set and not
/// empty; returns
/// the address served. A value that is not an address is an error.
pub fn serve_prometheus_from_env() -> Result<Option<SocketAddr>, Error> {
    let value = std::env::var(METRICS_ADDR_ENV).unwrap_or_default();
    if value.is_empty() {
        return Ok(None);
    }
    let addr: SocketAddr = value
        .parse()
        .map_err(|e| Error::invalid(format!("{METRICS_ADDR_ENV}={value}: {e}")))?;
    serve_prometheus(addr)?;
    Ok(Some(addr))
}
