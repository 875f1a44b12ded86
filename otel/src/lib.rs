//! OpenTelemetry for [dtasks]: one trace per instance tree, across processes and
//! suspensions, exported with OTLP.
//!
//! dtasks emits `tracing` spans (`dtask.start`, `dtask.delivery`, `dtask.step`,
//! `dtask.mailbox`) and carries the W3C trace context with every message it publishes
//! ([`dtasks::trace`]). This crate is the glue to OpenTelemetry:
//!
//! - [`OtelPropagator`] reads and writes that context with the W3C propagator and
//!   `tracing-opentelemetry`, so that a worker's delivery span continues the trace of
//!   the span that sent its message, in whatever process, however long ago;
//! - [`Otel`] builds a tracer provider (OTLP over HTTP from the standard `OTEL_*`
//!   environment, or any exporter), hands out the `tracing` layer that feeds it, sets the
//!   propagator, and flushes the spans still buffered when dropped.
//!
//! ```no_run
//! use tracing_subscriber::layer::SubscriberExt as _;
//! use tracing_subscriber::util::SubscriberInitExt as _;
//!
//! // OTEL_EXPORTER_OTLP_ENDPOINT=http://collector:4318 OTEL_SERVICE_NAME=worker
//! let otel = dtasks_otel::Otel::from_env("dtasks-worker").expect("OTLP exporter");
//! tracing_subscriber::registry()
//!     .with(otel.as_ref().map(|o| o.layer()))
//!     .init();
//! // … run workers; `otel` flushes the last spans when dropped.
//! ```
//!
//! A separate crate rather than a feature of `dtasks`: the OpenTelemetry crates move in
//! lockstep through breaking 0.x releases, and the core keeps its dependencies (and its
//! version) apart from theirs; it carries the context as plain strings.

use std::collections::HashMap;

use dtasks::trace::{Propagator, TraceContext};
use dtasks::Error;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// The environment variable that switches OTLP export on ([`Otel::from_env`]).
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The W3C trace context propagator for dtasks' messages, over the spans of
/// `tracing-opentelemetry` (its layer must be in the subscriber).
#[derive(Clone, Copy, Debug, Default)]
pub struct OtelPropagator;

impl Propagator for OtelPropagator {
    fn context_of(&self, span: &tracing::Span) -> Option<TraceContext> {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        let parent = carrier.remove("traceparent")?;
        TraceContext::new(parent, carrier.remove("tracestate").unwrap_or_default())
    }

    fn continue_trace(&self, span: &tracing::Span, context: &TraceContext) {
        let parent = extract(context);
        if parent.span().span_context().is_valid() {
            // Fails only when the span is disabled or already started: then it has no
            // parent to take.
            let _ = span.set_parent(parent);
        }
    }

    fn link(&self, span: &tracing::Span, context: &TraceContext) {
        let linked = extract(context);
        let linked = linked.span().span_context().clone();
        if linked.is_valid() {
            span.add_link(linked);
        }
    }
}

/// The OpenTelemetry context of `context`.
fn extract(context: &TraceContext) -> opentelemetry::Context {
    let mut carrier = HashMap::new();
    carrier.insert("traceparent".to_string(), context.traceparent().to_string());
    if let Some(state) = context.tracestate() {
        carrier.insert("tracestate".to_string(), state.to_string());
    }
    TraceContextPropagator::new().extract(&carrier)
}

/// An OpenTelemetry tracer provider for a process's dtasks spans: the layer that feeds
/// it, and a flush of what it buffered when dropped.
#[derive(Debug)]
pub struct Otel {
    provider: SdkTracerProvider,
}

impl Otel {
    /// OTLP over HTTP (protobuf) when `OTEL_EXPORTER_OTLP_ENDPOINT` is set and not empty (the exporter
    /// reads it and the other `OTEL_EXPORTER_OTLP_*` variables; the service name is
    /// `OTEL_SERVICE_NAME`, else `service`); `None` when it is not. Sets the dtasks
    /// propagator ([`OtelPropagator`]). Spans go out in batches from a thread of their
    /// own.
    pub fn from_env(service: &str) -> Result<Option<Otel>, Error> {
        if std::env::var_os(OTLP_ENDPOINT_ENV).is_none_or(|v| v.is_empty()) {
            return Ok(None);
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
            .map_err(|e| Error::invalid(format!("the OTLP span exporter: {e}")))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource(service))
            .build();
        Ok(Some(Otel::new(provider)))
    }

    /// Spans of service `service` to `exporter`, each as it ends (for tests, and
    /// exporters that batch themselves). Sets the dtasks propagator.
    pub fn with_exporter(service: &str, exporter: impl SpanExporter + 'static) -> Otel {
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .with_resource(resource(service))
            .build();
        Otel::new(provider)
    }

    /// Spans to `provider`. Sets the dtasks propagator (once per process: later calls
    /// leave the first in place, which is the same).
    pub fn new(provider: SdkTracerProvider) -> Otel {
        dtasks::trace::set_propagator(OtelPropagator);
        Otel { provider }
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans of this provider.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer("dtasks"))
    }

    /// The tracer provider.
    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    /// Exports the spans ended so far.
    pub fn flush(&self) -> Result<(), Error> {
        self.provider
            .force_flush()
            .map_err(|e| Error::invalid(format!("flushing spans: {e}")))
    }
}

impl Drop for Otel {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// The resource of `service`: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` win.
fn resource(service: &str) -> Resource {
    let from_env = std::env::var("OTEL_SERVICE_NAME").ok();
    Resource::builder()
        .with_service_name(from_env.unwrap_or_else(|| service.to_string()))
        .build()
}
