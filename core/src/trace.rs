//! W3C trace context across messages: one trace holds a client's start, every step on
//! every worker and every child, across processes and suspensions.
//!
//! Each message dtasks publishes can carry a [`TraceContext`] (`traceparent` and
//! `tracestate` as plain strings, in the field `trace` of `Outgoing`); a
//! transport keeps it with the message (RabbitMQ as the `traceparent` and `tracestate`
//! headers, which survive its delay queues, so a timer a day later continues the trace).
//! The core knows no tracing backend: it takes the context of a span and gives a span
//! its parent through the [`Propagator`] the process sets once with [`set_propagator`].
//! Without one, messages carry no context and nothing is done (`dtasks-otel` has the
//! OpenTelemetry propagator).
//!
//! What is whose parent: a client's start (the span current where `Client::start` or
//! `call` is called) is the parent of the worker's `dtask.delivery` span for it; every
//! `dtask.step` span is the parent of the deliveries its messages cause (its children's
//! starts, its timers, its result to its parent); a mailbox merge (`dtask.mailbox`)
//! continues the trace of the first drained message that has one, linked to the others.

use std::sync::OnceLock;

/// A W3C trace context: the `traceparent` and `tracestate` of the span a message was
/// sent from.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TraceContext {
    traceparent: String,
    tracestate: String,
}

impl TraceContext {
    /// A context from the header values; `None` when `traceparent` is empty. The values
    /// are not checked here: a propagator that cannot read them ignores them.
    pub fn new(traceparent: impl Into<String>, tracestate: impl Into<String>) -> Option<Self> {
        let traceparent = traceparent.into();
        if traceparent.is_empty() {
            return None;
        }
        Some(Self {
            traceparent,
            tracestate: tracestate.into(),
        })
    }

    /// The `traceparent` value (`00-<trace id>-<span id>-<flags>`).
    pub fn traceparent(&self) -> &str {
        &self.traceparent
    }

    /// The `tracestate` value, when there is one.
    pub fn tracestate(&self) -> Option<&str> {
        (!self.tracestate.is_empty()).then_some(self.tracestate.as_str())
    }
}

/// Moves trace context between `tracing` spans and messages: the hook a tracing backend
/// implements (`dtasks-otel` does, for OpenTelemetry).
pub trait Propagator: Send + Sync + 'static {
    /// The context of `span`, for the messages sent while it is current; `None` when it
    /// has none (a disabled span, say).
    fn context_of(&self, span: &tracing::Span) -> Option<TraceContext>;

    /// Makes `span` continue the trace of `context`, as its child. Called before `span`
    /// is first entered.
    fn continue_trace(&self, span: &tracing::Span, context: &TraceContext);

    /// Links `span` to the trace of `context` without making it its parent (the other
    /// messages a mailbox merge takes in). Called before `span` is first entered; by
    /// default nothing.
    fn link(&self, span: &tracing::Span, context: &TraceContext) {
        let _ = (span, context);
    }
}

static PROPAGATOR: OnceLock<Box<dyn Propagator>> = OnceLock::new();

/// Sets the process's propagator, once; returns `false` (and drops `propagator`) when
/// one was set already.
pub fn set_propagator(propagator: impl Propagator) -> bool {
    PROPAGATOR.set(Box::new(propagator)).is_ok()
}

/// The context of the current span, when a propagator is set.
pub(crate) fn current() -> Option<TraceContext> {
    let p = PROPAGATOR.get()?;
    p.context_of(&tracing::Span::current())
}

/// Makes `span` continue the trace of the first of `contexts` and links it to the others'
/// (those of other traces, or of other spans of its own).
pub(crate) fn continue_and_link<'a>(
    span: &tracing::Span,
    mut contexts: impl Iterator<Item = &'a TraceContext>,
) {
    let Some(p) = PROPAGATOR.get() else {
        return;
    };
    let Some(first) = contexts.next() else {
        return;
    };
    p.continue_trace(span, first);
    for c in contexts.filter(|c| *c != first) {
        p.link(span, c);
    }
}

/// Makes `span` continue `context`'s trace, when both exist.
pub(crate) fn continue_trace(span: &tracing::Span, context: Option<&TraceContext>) {
    if let (Some(p), Some(c)) = (PROPAGATOR.get(), context) {
        p.continue_trace(span, c);
    }
}
