//! `--probe`: the broker's CPU cost of each kind of operation the RabbitMQ transport does
//! per instance, measured one kind at a time with lapin alone. It explains where the
//! broker's CPU per dtasks step goes (see bench/README.md).

use std::time::Instant;

use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};

use crate::sys::{Admin, CpuMeter};

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

/// The arguments of a result register (as the transport declares it).
fn register_args() -> FieldTable {
    let mut a = FieldTable::default();
    a.insert("x-queue-type".into(), text("classic"));
    a.insert("x-max-length".into(), AMQPValue::LongLongInt(1));
    a.insert("x-overflow".into(), text("drop-head"));
    a.insert("x-expires".into(), AMQPValue::LongLongInt(600_000));
    a
}

fn quorum_args() -> FieldTable {
    let mut a = FieldTable::default();
    a.insert("x-queue-type".into(), text("quorum"));
    a
}

struct Row {
    what: &'static str,
    n: usize,
    wall: f64,
    broker: Option<f64>,
    bench: f64,
}

async fn publish_n(ch: &Channel, queue: &str, n: usize, body: &[u8]) -> anyhow::Result<()> {
    // Confirmed one at a time, like a step's publish (one wait per batch).
    for _ in 0..n {
        ch.basic_publish(
            ShortString::from(""),
            ShortString::from(queue),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
    }
    Ok(())
}

/// Runs the probe under `prefix` and returns a markdown table.
pub(crate) async fn run(
    url: &str,
    prefix: &str,
    admin: &Admin,
    broker: Option<&str>,
) -> anyhow::Result<String> {
    let conn = Connection::connect(url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let body = vec![0xA5u8; 264];
    let n = 1_000;
    let mut rows = Vec::new();
    let mut queues = Vec::new();
    let measure = |what: &'static str, n: usize, m: CpuMeter| {
        let u = m.stop();
        Row {
            what,
            n,
            wall: u.wall,
            broker: u.broker,
            bench: u.bench,
        }
    };

    // 1. Persistent confirmed publish to a quorum queue (a task message).
    let q = format!("{prefix}.probe.quorum");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::durable(),
        quorum_args(),
    )
    .await?;
    queues.push(q.clone());
    let m = CpuMeter::start(broker);
    publish_n(&ch, &q, n, &body).await?;
    rows.push(measure("publish 264 B to a quorum queue, confirmed", n, m));

    // 2. Consume + ack from the quorum queue (a delivery).
    let cch = conn.create_channel().await?;
    cch.basic_qos(64, BasicQosOptions::default()).await?;
    let m = CpuMeter::start(broker);
    let mut consumer = cch
        .basic_consume(
            q.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    use futures::StreamExt;
    for _ in 0..n {
        let d = consumer
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
        d.acker.ack(BasicAckOptions::default()).await?;
    }
    rows.push(measure("deliver + ack from a quorum queue", n, m));
    let _ = cch.close(200, "OK".into()).await;

    // 3. Persistent confirmed publish to a status register (classic, max-length 1).
    let q = format!("{prefix}.probe.status");
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions::durable(),
        register_args(),
    )
    .await?;
    queues.push(q.clone());
    let m = CpuMeter::start(broker);
    publish_n(&ch, &q, n, &body[..16]).await?;
    rows.push(measure(
        "publish 16 B to a status register (classic, max-length 1), confirmed",
        n,
        m,
    ));

    // 4. Declare a new register queue (one per instance: result, status).
    let k = 300;
    let names: Vec<String> = (0..k).map(|i| format!("{prefix}.probe.reg.{i}")).collect();
    let m = CpuMeter::start(broker);
    for name in &names {
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::durable(),
            register_args(),
        )
        .await?;
    }
    rows.push(measure("declare a new register queue", k, m));

    // 4b. The same for a plain durable classic queue and a transient one: what any classic
    //     queue costs to create, whatever its arguments.
    for (label, durable, tag) in [
        (
            "declare a new durable classic queue, no arguments",
            true,
            "plain",
        ),
        (
            "declare a new transient classic queue, no arguments",
            false,
            "transient",
        ),
    ] {
        let plain: Vec<String> = (0..k)
            .map(|i| format!("{prefix}.probe.{tag}.{i}"))
            .collect();
        let options = QueueDeclareOptions {
            durable,
            ..QueueDeclareOptions::default()
        };
        let m = CpuMeter::start(broker);
        for name in &plain {
            ch.queue_declare(name.as_str().into(), options, FieldTable::default())
                .await?;
        }
        rows.push(measure(label, k, m));
        queues.extend(plain);
    }

    // 5. Declare it again (idempotent; each transport declares what it first publishes to).
    let m = CpuMeter::start(broker);
    for name in &names {
        ch.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::durable(),
            register_args(),
        )
        .await?;
    }
    rows.push(measure("re-declare an existing register queue", k, m));

    // 6. What a client's result wait does on the broker: open a channel, declare the
    //    register, qos, consume, get the message, cancel, put it back, close.
    for name in &names {
        publish_n(&ch, name, 1, &body[..16]).await?;
    }
    let m = CpuMeter::start(broker);
    for name in &names {
        let c = conn.create_channel().await?;
        c.queue_declare(
            name.as_str().into(),
            QueueDeclareOptions::durable(),
            register_args(),
        )
        .await?;
        c.basic_qos(1, BasicQosOptions::default()).await?;
        let mut cons = c
            .basic_consume(
                name.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let d = cons
            .next()
            .await
            .ok_or_else(|| anyhow::anyhow!("consumer ended"))??;
        c.basic_cancel(cons.tag(), BasicCancelOptions::default())
            .await?;
        d.acker
            .reject(lapin::options::BasicRejectOptions { requeue: true })
            .await?;
        c.close(200, "OK".into()).await?;
    }
    rows.push(measure(
        "a result wait: channel open, declare, qos, consume, cancel, requeue, close",
        k,
        m,
    ));

    // 7. basic.get + nack (a register read, a mailbox drain).
    let m = CpuMeter::start(broker);
    for name in &names {
        if let Some(msg) = ch
            .basic_get(name.as_str().into(), BasicGetOptions { no_ack: false })
            .await?
        {
            msg.delivery
                .acker
                .reject(lapin::options::BasicRejectOptions { requeue: true })
                .await?;
        }
    }
    rows.push(measure("basic.get + requeue of one message", k, m));
    queues.extend(names);

    let _ = ch.close(200, "OK".into()).await;
    let _ = conn.close(200, "OK".into()).await;
    let t = Instant::now();
    admin.delete(&queues).await?;
    let deleted = t.elapsed().as_secs_f64();

    let mut o = String::from(
        "| operation (one at a time) | n | broker CPU ms / op | bench CPU ms / op | wall ms / op |\n|---|---:|---:|---:|---:|\n",
    );
    for r in &rows {
        o.push_str(&format!(
            "| {} | {} | {} | {:.3} | {:.3} |\n",
            r.what,
            r.n,
            r.broker
                .map_or("—".into(), |b| format!("{:.3}", b / r.n as f64 * 1e3)),
            r.bench / r.n as f64 * 1e3,
            r.wall / r.n as f64 * 1e3
        ));
    }
    o.push_str(&format!(
        "\n(deleting the {} probe queues took {:.2} s)\n",
        queues.len(),
        deleted
    ));
    Ok(o)
}
