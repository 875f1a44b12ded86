//! The properties and headers of the messages the transport publishes, and their readers.

use dtasks::trace::TraceContext;
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;

use crate::clock::now_ms;
use crate::topology::text;

/// Header: why a message was dead-lettered.
pub(crate) const H_REASON: &str = "x-dtasks-reason";
/// Header: the queue a dead-lettered message came from.
pub(crate) const H_QUEUE: &str = "x-dtasks-queue";
/// Header of a dead letter whose body was cut: the full body's size in bytes.
pub(crate) const H_TRUNCATED: &str = "x-dtasks-truncated";
/// Header: the instance a message is about.
pub(crate) const H_INSTANCE: &str = "x-dtasks-instance";
/// Header: the DTask name of that instance.
pub(crate) const H_DTASK: &str = "x-dtasks-dtask";
/// Header: the envelope version of the body.
pub(crate) const H_ENVELOPE: &str = "x-dtasks-envelope";
/// Header: a message id too long for the `message_id` property.
pub(crate) const H_MESSAGE_ID: &str = "x-dtasks-message-id";
/// Header: when a delayed message is due (milliseconds since the Unix epoch).
pub(crate) const H_AT: &str = "x-dtasks-at";
/// Header: the DTask whose task queue a delayed message goes to when due.
pub(crate) const H_TARGET: &str = "x-dtasks-target";
/// Header of a doorbell: the ids of the mailbox messages it announces, space-separated.
pub(crate) const H_RINGS: &str = "x-dtasks-rings";
/// Header of a marker in a stream: a message that is not a record, published by a
/// follower that waits to read it back, or as a nudge that nobody waits for
/// (`follow.rs` says why streams are nudged).
pub(crate) const H_MARKER: &str = "x-dtasks-marker";

/// Header of a reply whose result is the one the instance store recorded (`1`; absent
/// otherwise): the client takes it without reading the store
/// ([`Destination::Reply`](dtasks::transport::Destination::Reply)).
pub(crate) const H_RECORDED: &str = "x-dtasks-recorded";

/// Header: the W3C `traceparent` of the span the message was sent from.
pub(crate) const H_TRACEPARENT: &str = "traceparent";
/// Header: the W3C `tracestate` that goes with it.
pub(crate) const H_TRACESTATE: &str = "tracestate";

/// The properties of a message published by the transport: persistent, with its id and
/// the dtasks headers.
pub(crate) fn properties(message_id: &str, instance: &str, dtask: &str) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(H_INSTANCE.into(), text(instance));
    headers.insert(H_DTASK.into(), text(dtask));
    headers.insert(
        H_ENVELOPE.into(),
        AMQPValue::ShortShortUInt(dtasks::ENVELOPE_VERSION),
    );
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/x-dtasks".into())
        .with_timestamp((now_ms() / 1000) as u64);
    match ShortString::try_new(message_id) {
        Ok(id) => props = props.with_message_id(id),
        Err(_) => {
            headers.insert(H_MESSAGE_ID.into(), text(message_id));
        }
    }
    props.with_headers(headers)
}

/// Adds `extra` headers to `props`.
pub(crate) fn with_headers(
    props: BasicProperties,
    extra: Vec<(&str, AMQPValue)>,
) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    for (k, v) in extra {
        headers.insert(k.into(), v);
    }
    props.with_headers(headers)
}

pub(crate) fn message_id(props: &BasicProperties) -> Option<String> {
    if let Some(id) = props.message_id() {
        return Some(id.to_string());
    }
    let headers = props.headers().as_ref()?;
    match headers.inner().get(H_MESSAGE_ID)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

pub(crate) fn header_i64(props: &BasicProperties, key: &str) -> Option<i64> {
    let v = props.headers().as_ref()?.inner().get(key)?;
    match v {
        AMQPValue::LongLongInt(n) => Some(*n),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::Timestamp(n) => i64::try_from(*n).ok(),
        _ => None,
    }
}

pub(crate) fn header_str(props: &BasicProperties, key: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => String::from_utf8(s.as_bytes().to_vec()).ok(),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        _ => None,
    }
}

/// Whether a reply carries [`H_RECORDED`] (any non-zero number or `true`).
pub(crate) fn recorded(props: &BasicProperties) -> bool {
    let Some(headers) = props.headers().as_ref() else {
        return false;
    };
    match headers.inner().get(H_RECORDED) {
        Some(AMQPValue::Boolean(b)) => *b,
        Some(AMQPValue::ShortShortUInt(n)) => *n != 0,
        Some(AMQPValue::ShortShortInt(n)) => *n != 0,
        Some(AMQPValue::ShortUInt(n)) => *n != 0,
        Some(AMQPValue::ShortInt(n)) => *n != 0,
        Some(AMQPValue::LongUInt(n)) => *n != 0,
        Some(AMQPValue::LongInt(n)) => *n != 0,
        Some(AMQPValue::LongLongInt(n)) => *n != 0,
        _ => false,
    }
}

/// `props` with the trace context's headers, when there is one (RabbitMQ keeps headers
/// through its delay queues and dead-lettering: a timer continues the trace).
pub(crate) fn with_trace(props: BasicProperties, trace: Option<&TraceContext>) -> BasicProperties {
    let Some(t) = trace else {
        return props;
    };
    let mut extra = vec![(H_TRACEPARENT, text(t.traceparent()))];
    if let Some(state) = t.tracestate() {
        extra.push((H_TRACESTATE, text(state)));
    }
    with_headers(props, extra)
}

/// The trace context a message was sent with.
pub(crate) fn trace(props: &BasicProperties) -> Option<TraceContext> {
    let parent = header_str(props, H_TRACEPARENT)?;
    TraceContext::new(parent, header_str(props, H_TRACESTATE).unwrap_or_default())
}
