//! E1: the signal round trip. An instance waits for an event (`DTask::event`); once it
//! waits, the client sends the event (`Client::signal`) and the instance, resumed,
//! finishes: the time from the send to the result received, one instance at a time. On
//! RabbitMQ the rounds alternate with the raw equivalent, lapin alone: publish a message
//! to a queue (persistent, confirmed), a consumer publishes a reply to a reply queue
//! (persistent, confirmed) and then acks, and the client receives the reply.

use std::time::{Duration, Instant};

use dtasks::Status;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use tokio::task::JoinHandle;

use crate::counting::Counts;
use crate::env::Env;
use crate::sys::Admin;
use crate::tasks::{await_event, E1_EVENT};

/// How long one round may take before it counts as lost.
const LIMIT: Duration = Duration::from_secs(60);

/// Rounds run before the measured ones, on each side (not recorded).
pub(crate) const WARM_UP: usize = 5;

/// The measurements and checks of E1 at one place.
#[derive(Clone, Debug, Default)]
pub(crate) struct E1Run {
    /// Measured rounds.
    pub(crate) rounds: usize,
    /// dtasks: from the start of `signal` to the result received, per round (ms).
    pub(crate) round_trip_ms: Vec<f64>,
    /// dtasks: the `signal` call alone, until the event is durable (ms).
    pub(crate) send_ms: Vec<f64>,
    /// Raw (RabbitMQ only): from the start of the request's publish to the reply
    /// received, per round (ms).
    pub(crate) raw_ms: Vec<f64>,
    /// Raw: the request's publish alone, until confirmed (ms).
    pub(crate) raw_send_ms: Vec<f64>,
    /// What the core published over the measured dtasks rounds (the waits before each
    /// send included: the start, the first step's suspension).
    pub(crate) counts: Counts,
    /// Deliveries the workers handled over the measured rounds.
    pub(crate) deliveries: u64,
    /// Verification failures.
    pub(crate) errors: Vec<String>,
}

impl E1Run {
    /// One line for the progress log.
    pub(crate) fn summary(&self) -> String {
        let p50 = crate::stats::pct(&self.round_trip_ms, 0.5);
        let raw = crate::stats::pct(&self.raw_ms, 0.5);
        let mut s = format!("{} rounds, send → result p50 {p50:.2} ms", self.rounds);
        if raw.is_finite() {
            s.push_str(&format!(", raw p50 {raw:.2} ms"));
        }
        if !self.errors.is_empty() {
            s.push_str(" (FAILED)");
        }
        s
    }
}

/// The raw side of E1 on RabbitMQ: a responder and the client's connection.
pub(crate) struct RawRoundTrip {
    conns: Vec<Connection>,
    publish: Channel,
    replies: Consumer,
    request_queue: String,
    responder: JoinHandle<String>,
    /// Why the responder stopped, once it did (the rounds after that are not run).
    stopped: Option<String>,
}

/// The raw round trip's queues under `prefix`: requests, replies.
pub(crate) fn raw_queues(prefix: &str) -> [String; 2] {
    [
        format!("{prefix}.e1raw.req"),
        format!("{prefix}.e1raw.reply"),
    ]
}

fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

async fn publish_confirmed(ch: &Channel, queue: &str, body: &[u8]) -> Result<(), String> {
    let confirm = ch
        .basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            body,
            persistent(),
        )
        .await
        .map_err(|e| format!("raw publish: {e}"))?;
    match confirm.await {
        Ok(Confirmation::Ack(None)) => Ok(()),
        other => Err(format!("raw publish not confirmed: {other:?}")),
    }
}

impl RawRoundTrip {
    /// Declares the queues (requests: a quorum queue, like dtasks' task queues; replies: a
    /// durable classic queue, like a result register) and starts the responder on a
    /// connection of its own.
    pub(crate) async fn start(url: &str, prefix: &str, admin: &Admin) -> anyhow::Result<Self> {
        let [req, reply] = raw_queues(prefix);
        let ch = admin.channel().await?;
        let mut quorum = FieldTable::default();
        quorum.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString(LongString::from("quorum".as_bytes().to_vec())),
        );
        ch.queue_declare(
            ShortString::from(req.as_str()),
            QueueDeclareOptions::durable(),
            quorum,
        )
        .await?;
        ch.queue_declare(
            ShortString::from(reply.as_str()),
            QueueDeclareOptions::durable(),
            FieldTable::default(),
        )
        .await?;
        let _ = ch.close(200, "OK".into()).await;

        // The responder: for each request, publish its body as the reply (confirmed),
        // then ack the request.
        let rconn = Connection::connect(url, ConnectionProperties::default()).await?;
        let cons = rconn.create_channel().await?;
        cons.basic_qos(1, BasicQosOptions::default()).await?;
        let rpub = rconn.create_channel().await?;
        rpub.confirm_select(ConfirmSelectOptions::default()).await?;
        let mut requests = cons
            .basic_consume(
                ShortString::from(req.as_str()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let reply_queue = reply.clone();
        // It returns why it stopped: a round waiting for a reply then fails at once, with
        // that reason, instead of after its limit.
        let responder = tokio::spawn(async move {
            loop {
                let d = match requests.next().await {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return format!("its consumer failed: {e}"),
                    None => return "its consumer ended".to_string(),
                };
                if let Err(e) = publish_confirmed(&rpub, &reply_queue, &d.data).await {
                    return format!("its reply failed: {e}");
                }
                if let Err(e) = d.acker.ack(BasicAckOptions::default()).await {
                    return format!("its ack failed: {e}");
                }
            }
        });

        // The client: a confirm channel for requests, a consumer of the replies.
        let cconn = Connection::connect(url, ConnectionProperties::default()).await?;
        let publish = cconn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let rch = cconn.create_channel().await?;
        let replies = rch
            .basic_consume(
                ShortString::from(reply.as_str()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            conns: vec![rconn, cconn],
            publish,
            replies,
            request_queue: req,
            responder,
            stopped: None,
        })
    }

    /// One round: `(publish → reply, publish → confirmed)` in ms.
    /// Fails at once once the responder has stopped.
    async fn round(&mut self, n: u64) -> Result<(f64, f64), String> {
        if let Some(why) = &self.stopped {
            return Err(format!(
                "raw round {n} not run: the responder stopped ({why})"
            ));
        }
        let body = n.to_le_bytes();
        let t0 = Instant::now();
        publish_confirmed(&self.publish, &self.request_queue, &body).await?;
        let sent = t0.elapsed();
        let reply = tokio::select! {
            r = tokio::time::timeout(LIMIT, self.replies.next()) => Some(r),
            why = &mut self.responder => {
                let why = why.unwrap_or_else(|e| format!("it panicked: {e}"));
                self.stopped = Some(why.clone());
                return Err(format!("raw round {n}: the responder stopped ({why})"));
            }
        };
        let d = match reply {
            Some(Ok(Some(Ok(d)))) => d,
            Some(Ok(other)) => return Err(format!("raw reply consumer ended: {other:?}")),
            _ => return Err(format!("raw round {n}: no reply within {LIMIT:?}")),
        };
        let took = t0.elapsed();
        d.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| format!("raw reply ack: {e}"))?;
        if d.data != body {
            return Err(format!("raw round {n} got the reply of another round"));
        }
        Ok((took.as_secs_f64() * 1e3, sent.as_secs_f64() * 1e3))
    }

    /// Stops the responder and closes the connections.
    pub(crate) async fn stop(self) {
        // The connections first: a channel dropped with the aborted responder closes on
        // its own, and lapin takes the broker's close of a channel it is closing for a
        // connection error.
        for c in self.conns {
            let _ = c.close(200, "OK".into()).await;
        }
        self.responder.abort();
    }
}

/// One dtasks round: start an instance, wait until it waits for its event, send the
/// event, and wait for the result. Returns `(send → result, send)` in ms.
async fn round(env: &Env, tag: u64) -> Result<(f64, f64), String> {
    let value = tag.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let r = tokio::time::timeout(LIMIT, async {
        let h = env
            .client
            .start(await_event(tag))
            .await
            .map_err(|e| format!("start: {e}"))?;
        // Wait for the result from now on, so that the wait is in place before the send.
        let waiting = env.client.handle::<(u64, u64)>(h.id().clone());
        let result = tokio::spawn(async move { waiting.result().await });
        loop {
            match h.status().await {
                Ok(Status::Suspended) => break,
                Ok(s) if s.is_finished() => {
                    return Err(format!("finished before its event: {s:?}"))
                }
                Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                Err(e) => return Err(format!("status: {e}")),
            }
        }
        let t0 = Instant::now();
        env.client
            .signal(h.id(), E1_EVENT, &value)
            .await
            .map_err(|e| format!("signal: {e}"))?;
        let sent = t0.elapsed();
        let got = result
            .await
            .map_err(|e| format!("the result wait panicked: {e}"))?
            .map_err(|e| format!("result: {e}"))?;
        let took = t0.elapsed();
        if got != (tag, value) {
            return Err(format!(
                "instance {tag} returned {got:?}, expected {:?}",
                (tag, value)
            ));
        }
        Ok((took.as_secs_f64() * 1e3, sent.as_secs_f64() * 1e3))
    })
    .await;
    match r {
        Ok(r) => r,
        Err(_) => Err(format!("round {tag}: no result within {LIMIT:?}")),
    }
}

/// E1 on `env`: `rounds` measured rounds after a warm-up, alternating with the raw round
/// trip when `raw` is given.
pub(crate) async fn run(
    env: &Env,
    admin: Option<&Admin>,
    mut raw: Option<&mut RawRoundTrip>,
    rounds: usize,
    base: u64,
) -> anyhow::Result<E1Run> {
    let mut run = E1Run {
        rounds,
        ..E1Run::default()
    };
    for i in 0..WARM_UP {
        if let Some(raw) = raw.as_deref_mut() {
            if let Err(e) = raw.round(base + i as u64).await {
                run.errors.push(format!("raw warm-up: {e}"));
            }
        }
        if let Err(e) = round(env, base + i as u64).await {
            run.errors.push(format!("warm-up: {e}"));
        }
    }
    let counts = env.counters.snapshot();
    let deliveries = env.stats().processed;
    let dead = env.dead_letters(admin).await?;
    for i in WARM_UP..WARM_UP + rounds {
        let tag = base + i as u64;
        // The raw round first, then dtasks: both see the same moment of the machine.
        if let Some(raw) = raw.as_deref_mut() {
            match raw.round(tag).await {
                Ok((took, sent)) => {
                    run.raw_ms.push(took);
                    run.raw_send_ms.push(sent);
                }
                Err(e) => run.errors.push(e),
            }
        }
        match round(env, tag).await {
            Ok((took, sent)) => {
                run.round_trip_ms.push(took);
                run.send_ms.push(sent);
            }
            Err(e) => run.errors.push(e),
        }
    }
    run.counts = env.counters.snapshot().since(&counts);
    run.deliveries = env.stats().processed - deliveries;
    let dead = env.dead_letters(admin).await? - dead;
    if dead > 0 {
        run.errors
            .push(format!("{dead} messages were dead-lettered"));
    }
    if run.round_trip_ms.len() != rounds {
        run.errors.push(format!(
            "{} of {rounds} rounds returned their event",
            run.round_trip_ms.len()
        ));
    }
    Ok(run)
}
