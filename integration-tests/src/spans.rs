//! Spans as the tests see them: OpenTelemetry spans of the test process (an in-memory
//! exporter) and of worker processes (each appends its spans to a file of JSON lines in
//! the directory `IT_SPANS_DIR` names), in one form.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Context as _;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use serde::{Deserialize, Serialize};

/// The environment variable that makes `it-worker` write its spans to a directory.
pub const SPANS_DIR_ENV: &str = "IT_SPANS_DIR";

/// One ended span.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpanRecord {
    /// Its name (`dtask.step`, …).
    pub name: String,
    /// The trace it belongs to (hex).
    pub trace_id: String,
    /// Its id (hex).
    pub span_id: String,
    /// Its parent's id (hex; zeros for a root).
    pub parent_span_id: String,
    /// Its attributes, as text.
    pub attributes: BTreeMap<String, String>,
    /// The process that ended it.
    pub pid: u32,
}

impl SpanRecord {
    /// The record of `span`, ended in this process.
    pub fn of(span: &SpanData) -> Self {
        Self {
            name: span.name.to_string(),
            trace_id: span.span_context.trace_id().to_string(),
            span_id: span.span_context.span_id().to_string(),
            parent_span_id: span.parent_span_id.to_string(),
            attributes: span
                .attributes
                .iter()
                .map(|kv| (kv.key.to_string(), kv.value.to_string()))
                .collect(),
            pid: std::process::id(),
        }
    }

    /// The attribute `key`, or "".
    pub fn attr(&self, key: &str) -> &str {
        self.attributes.get(key).map(String::as_str).unwrap_or("")
    }
}

/// Appends every span it exports to a file, one JSON line each.
#[derive(Debug)]
pub struct FileExporter {
    file: Mutex<File>,
}

impl FileExporter {
    /// Spans to `spans-<pid>.jsonl` in `dir`.
    pub fn in_dir(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(format!("spans-{}.jsonl", std::process::id()));
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self {
            file: Mutex::new(file),
        })
    }
}

impl SpanExporter for FileExporter {
    fn export(
        &self,
        batch: Vec<SpanData>,
    ) -> impl std::future::Future<Output = OTelSdkResult> + Send {
        let mut text = String::new();
        for span in &batch {
            if let Ok(line) = serde_json::to_string(&SpanRecord::of(span)) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        let written = self
            .file
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .write_all(text.as_bytes())
            .map_err(|e| OTelSdkError::InternalFailure(e.to_string()));
        std::future::ready(written)
    }
}

/// Every span written to the files of `dir`.
pub fn read_dir(dir: &Path) -> anyhow::Result<Vec<SpanRecord>> {
    let mut spans = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let file = File::open(&path)?;
        for line in BufReader::new(file).lines() {
            let line = line?;
            spans.push(
                serde_json::from_str(&line)
                    .with_context(|| format!("a span line of {}: {line}", path.display()))?,
            );
        }
    }
    Ok(spans)
}
