//! RabbitMQ as an [`Env`]: a [`Broker`] corner of its own per scenario, in-process workers
//! on connections of their own, real time.

use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use dtasks::{Client, InstanceId, WorkerConfig};
use lapin::types::{AMQPValue, FieldTable};

use super::{Clock, DeadLetter, Env, Outcome, Registers};
use crate::{Broker, Workers};

/// A scenario's queues on the test broker (see [`Broker`]).
#[derive(Debug)]
pub struct AmqpEnv {
    broker: Broker,
    /// Dead letters taken from the dead-letter queue so far (taking them acks them).
    dead: Mutex<Vec<DeadLetter>>,
}

impl AmqpEnv {
    /// Connects to the test broker under a fresh prefix.
    pub async fn start() -> anyhow::Result<Self> {
        Ok(Self {
            broker: Broker::start().await?,
            dead: Mutex::new(Vec::new()),
        })
    }

    /// The broker corner, for checks beyond the suite.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }
}

fn header(headers: &FieldTable, name: &str) -> anyhow::Result<String> {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => Ok(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => anyhow::bail!("no {name} header: {other:?}"),
    }
}

impl Env for AmqpEnv {
    fn clock(&self) -> Clock {
        Clock::Real
    }

    fn now(&self) -> SystemTime {
        SystemTime::now()
    }

    fn shares_deliveries(&self) -> bool {
        true
    }

    async fn workers(&self, n: usize, config: WorkerConfig) -> anyhow::Result<Workers> {
        self.broker.workers_with(n, config).await
    }

    async fn client(&self) -> anyhow::Result<Client> {
        self.broker.client().await
    }

    async fn advance(&self, by: Duration) {
        tokio::time::sleep(by).await;
    }

    async fn wait_idle(&self) -> bool {
        // Timers wait in the broker's queues as messages: no count tells work from waiting.
        false
    }

    async fn inject_raw(&self, name: &str, body: Vec<u8>) -> anyhow::Result<()> {
        let queue = self.task_queue(name).context("a task queue")?;
        let ch = self.broker.channel().await?;
        ch.basic_publish(
            "".into(),
            queue.as_str().into(),
            Default::default(),
            &body,
            lapin::BasicProperties::default().with_delivery_mode(2),
        )
        .await?
        .await?;
        let _ = ch.close(200, "OK".into()).await;
        Ok(())
    }

    async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        let queue = format!("{}.dead", self.broker.prefix());
        let mut taken = Vec::new();
        for d in self.broker.take_all(&queue).await? {
            let headers = d.properties.headers().clone().unwrap_or_default();
            taken.push(DeadLetter {
                reason: header(&headers, "x-dtasks-reason")?,
                queue: Some(header(&headers, "x-dtasks-queue")?),
                body: d.data,
            });
        }
        let mut dead = self.dead.lock().unwrap_or_else(|p| p.into_inner());
        dead.extend(taken);
        Ok(dead.clone())
    }

    fn task_queue(&self, name: &str) -> Option<String> {
        Some(format!("{}.task.{name}", self.broker.prefix()))
    }

    async fn registers(&self, id: &InstanceId) -> anyhow::Result<Registers> {
        let prefix = self.broker.prefix();
        let queue = |register: &str| format!("{prefix}.{register}.{id}");
        Ok(Registers {
            result: self.broker.queue_len(&queue("result")).await?.is_some(),
            status: self.broker.queue_len(&queue("status")).await?.is_some(),
            mailbox: self.broker.queue_len(&queue("mbox")).await?.is_some(),
        })
    }

    async fn consumers(&self, name: &str) -> anyhow::Result<Option<u32>> {
        let queue = self.task_queue(name).context("a task queue")?;
        Ok(Some(self.broker.consumers(&queue).await?))
    }

    async fn cleanup(self) -> Outcome {
        self.broker.cleanup().await
    }
}
