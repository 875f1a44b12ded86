//! What a step shows of itself: its `dtask.step` span and its metrics
//! ([`crate::metrics`]).

use std::time::Instant;

use tracing::{field, info_span, Span};

use crate::error::Failure;
use crate::metrics;
use crate::protocol::state::InstanceState;

/// The span and the counters of one step.
pub(super) struct StepWatch {
    /// `dtask.step`, with the instance, its DTask and its step number.
    pub(super) span: Span,
    dtask: String,
    model: &'static str,
    started: Option<Instant>,
}

impl StepWatch {
    /// One span per step, wherever it runs (a delivery, an inline run, a mailbox merge).
    pub(super) fn new(state: &InstanceState) -> Self {
        let span = info_span!(
            "dtask.step",
            instance = %state.id,
            dtask = %state.name,
            step = state.steps,
            model = field::Empty,
            outcome = field::Empty,
        );
        Self {
            span,
            dtask: state.name.clone(),
            model: "none",
            started: None,
        }
    }

    /// The body starts running under `model`.
    pub(super) fn running(&mut self, model: &'static str) {
        self.span.record("model", model);
        self.model = model;
        self.started = Some(Instant::now());
    }

    /// The body stopped running: its duration goes to the histogram.
    pub(super) fn ran(&self) {
        if let Some(started) = self.started {
            ::metrics::histogram!(metrics::STEP_DURATION, "dtask" => self.dtask.clone())
                .record(metrics::seconds(started));
        }
    }

    /// The step ended with `outcome` (`suspended`, `completed` or `failed`).
    pub(super) fn end(&self, outcome: &'static str) {
        self.span.record("outcome", outcome);
        ::metrics::counter!(
            metrics::STEPS,
            "dtask" => self.dtask.clone(),
            "model" => self.model,
            "outcome" => outcome,
        )
        .increment(1);
    }
}

/// Counts the failure of an instance of `dtask`.
pub(super) fn count_failure(dtask: &str, f: &Failure) {
    ::metrics::counter!(
        metrics::FAILURES,
        "dtask" => dtask.to_string(),
        "kind" => f.kind_name(),
    )
    .increment(1);
}
