//! The baseline: raw step hand-off with lapin alone. A consumer that, for each message,
//! publishes the next message of its chain (persistent, publisher-confirmed) and then acks
//! the one it consumed. Same broker, same durability (a quorum queue), same worker count,
//! prefetch and concurrency as the dtasks workers.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::mpsc;

use crate::sys::{Admin, CpuMeter, CpuUse};
use crate::tasks::PAD_BYTE;

/// One run of the baseline.
#[derive(Clone, Debug, Default)]
pub(crate) struct RawRun {
    pub(crate) chains: usize,
    /// Hand-offs: consume → publish next (confirmed) → ack.
    pub(crate) steps: u64,
    pub(crate) cpu: CpuUse,
    /// Bytes of one message body (8-byte header + payload).
    pub(crate) body_len: usize,
    pub(crate) errors: Vec<String>,
}

impl RawRun {
    pub(crate) fn steps_per_s(&self) -> f64 {
        self.steps as f64 / self.cpu.wall
    }
}

/// What to run.
#[derive(Clone, Debug)]
pub(crate) struct RawSpec {
    pub(crate) url: String,
    pub(crate) queue: String,
    pub(crate) chains: usize,
    pub(crate) steps: u32,
    pub(crate) payload: u32,
    pub(crate) consumers: usize,
    pub(crate) prefetch: u16,
}

fn body(chain: u32, step: u32, payload: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(8 + payload as usize);
    b.extend_from_slice(&chain.to_le_bytes());
    b.extend_from_slice(&step.to_le_bytes());
    b.resize(8 + payload as usize, PAD_BYTE);
    b
}

fn parse(b: &[u8], payload: u32) -> Result<(u32, u32), String> {
    if b.len() != 8 + payload as usize || b[8..].iter().any(|x| *x != PAD_BYTE) {
        return Err(format!(
            "a raw message of {} bytes arrived corrupted",
            b.len()
        ));
    }
    let chain = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let step = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    Ok((chain, step))
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

/// Declares the baseline's quorum queue.
pub(crate) async fn declare(admin: &Admin, queue: &str) -> anyhow::Result<()> {
    let ch = admin.channel().await?;
    let mut args = FieldTable::default();
    args.insert(
        ShortString::from("x-queue-type"),
        AMQPValue::LongString(LongString::from("quorum".as_bytes().to_vec())),
    );
    ch.queue_declare(
        ShortString::from(queue),
        QueueDeclareOptions::durable(),
        args,
    )
    .await?;
    let _ = ch.close(200, "OK".into()).await;
    Ok(())
}

/// Runs the baseline once. The queue must exist and be empty.
pub(crate) async fn handoff(spec: &RawSpec, broker: Option<&str>) -> anyhow::Result<RawRun> {
    let (tx, mut rx) = mpsc::unbounded_channel::<Result<u32, String>>();
    // Acks sent: the connections close only after every delivery is acked, or the broker
    // would put the unacked ones back (a chain's last step can finish before the ack of
    // the step that published it).
    let acked = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for _ in 0..spec.consumers {
        let conn = Connection::connect(&spec.url, ConnectionProperties::default()).await?;
        let cons_ch = conn.create_channel().await?;
        cons_ch
            .basic_qos(spec.prefetch, BasicQosOptions::default())
            .await?;
        let pub_ch = conn.create_channel().await?;
        pub_ch
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut consumer = cons_ch
            .basic_consume(
                ShortString::from(spec.queue.as_str()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let acked = acked.clone();
        let (tx, queue, steps, payload) = (
            tx.clone(),
            Arc::<str>::from(spec.queue.as_str()),
            spec.steps,
            spec.payload,
        );
        tokio::spawn(async move {
            while let Some(d) = consumer.next().await {
                let d = match d {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = tx.send(Err(format!("raw consumer: {e}")));
                        return;
                    }
                };
                let (tx, queue, pub_ch) = (tx.clone(), queue.clone(), pub_ch.clone());
                let acked = acked.clone();
                tokio::spawn(async move {
                    let r = async {
                        let (chain, step) = parse(&d.data, payload)?;
                        if step < steps {
                            publish_confirmed(&pub_ch, &queue, &body(chain, step + 1, payload))
                                .await?;
                        }
                        d.acker
                            .ack(BasicAckOptions::default())
                            .await
                            .map_err(|e| format!("raw ack: {e}"))?;
                        acked.fetch_add(1, Ordering::Relaxed);
                        Ok::<_, String>((step == steps).then_some(chain))
                    }
                    .await;
                    match r {
                        Ok(Some(chain)) => {
                            let _ = tx.send(Ok(chain));
                        }
                        Ok(None) => {}
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            }
        });
        conns.push((conn, cons_ch));
    }
    drop(tx);
    let seed_conn = Connection::connect(&spec.url, ConnectionProperties::default()).await?;
    let seed = seed_conn.create_channel().await?;
    seed.confirm_select(ConfirmSelectOptions::default()).await?;

    let mut run = RawRun {
        chains: spec.chains,
        steps: spec.chains as u64 * u64::from(spec.steps),
        body_len: 8 + spec.payload as usize,
        ..RawRun::default()
    };
    let meter = CpuMeter::start(broker);
    let t0 = Instant::now();
    // Seed every chain at once (pipelined publishes, then the confirms).
    let mut confirms = Vec::with_capacity(spec.chains);
    for c in 0..spec.chains {
        let confirm = seed
            .basic_publish(
                ShortString::from(""),
                ShortString::from(spec.queue.as_str()),
                BasicPublishOptions::default(),
                &body(c as u32, 0, spec.payload),
                persistent(),
            )
            .await?;
        confirms.push(confirm);
    }
    for c in confirms {
        if !matches!(c.await?, Confirmation::Ack(_)) {
            run.errors.push("a seed was not confirmed".into());
        }
    }
    let mut done = HashSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(300);
    while done.len() < spec.chains {
        let next = tokio::select! {
            m = rx.recv() => m,
            _ = tokio::time::sleep_until(deadline) => {
                run.errors.push("raw baseline: chains missing after 300 s".into());
                break;
            }
        };
        match next {
            Some(Ok(chain)) => {
                if !done.insert(chain) {
                    run.errors.push(format!("raw chain {chain} finished twice"));
                }
            }
            Some(Err(e)) => run.errors.push(e),
            None => {
                run.errors.push("raw consumers ended early".into());
                break;
            }
        }
    }
    run.cpu = meter.stop();
    let _ = t0;
    let all_acks = spec.chains as u64 * (u64::from(spec.steps) + 1);
    let ack_deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < all_acks && run.errors.is_empty() {
        if Instant::now() > ack_deadline {
            run.errors.push(format!(
                "raw baseline: {} of {all_acks} deliveries acked after 30 s",
                acked.load(Ordering::Relaxed)
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if done.len() != spec.chains {
        run.errors.push(format!(
            "raw baseline: {} of {} chains finished",
            done.len(),
            spec.chains
        ));
    }
    // Each connection closes its channels with it (a channel closed on its own first
    // while its consumer task still held the publish channel made lapin end the
    // connection with an error).
    for (conn, _ch) in conns {
        let _ = conn.close(200, "OK".into()).await;
    }
    let _ = seed_conn.close(200, "OK".into()).await;
    Ok(run)
}
