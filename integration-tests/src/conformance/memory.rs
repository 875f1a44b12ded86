//! The in-memory transport as an [`Env`], under virtual time: a scenario's delays take no
//! time, and its checks between two moves of the clock are exact.

use std::time::{Duration, SystemTime};

use dtasks::{Client, InstanceId, MemoryTransport, Transport as _, Worker, WorkerConfig};

use super::{Clock, DeadLetter, Env, Outcome, Registers};
use crate::Workers;

/// One in-memory transport with virtual time, shared by a scenario's workers and clients.
#[derive(Debug)]
pub struct MemoryEnv {
    transport: MemoryTransport,
}

impl MemoryEnv {
    /// A fresh transport, its clock stopped at the current time.
    pub fn new() -> Self {
        crate::init_tracing();
        Self {
            transport: MemoryTransport::builder().virtual_time().build(),
        }
    }
}

impl Default for MemoryEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Env for MemoryEnv {
    fn clock(&self) -> Clock {
        Clock::Virtual
    }

    fn now(&self) -> SystemTime {
        self.transport.now()
    }

    fn shares_deliveries(&self) -> bool {
        // Every consumer is woken for a new message, and the first to look takes it.
        false
    }

    async fn workers(&self, n: usize, config: WorkerConfig) -> anyhow::Result<Workers> {
        let mut workers = Vec::new();
        for _ in 0..n {
            workers.push(Worker::new(self.transport.clone(), config.clone())?);
        }
        // Queues exist before anyone consumes them: nothing published early is lost.
        Ok(Workers::run(workers))
    }

    async fn client(&self) -> anyhow::Result<Client> {
        Ok(Client::new(self.transport.clone()))
    }

    async fn advance(&self, by: Duration) {
        // Timers are set when the steps before them ran: let those run first.
        self.transport.wait_idle().await;
        self.transport.advance(by);
        self.transport.wait_idle().await;
    }

    async fn wait_idle(&self) -> bool {
        self.transport.wait_idle().await;
        true
    }

    async fn inject_raw(&self, name: &str, body: Vec<u8>) -> anyhow::Result<()> {
        self.transport.inject_raw(name, body);
        Ok(())
    }

    async fn dead_letters(&self) -> anyhow::Result<Vec<DeadLetter>> {
        Ok(self
            .transport
            .dead_letters()
            .into_iter()
            .map(|d| DeadLetter {
                body: d.body,
                reason: d.reason,
                // The in-memory transport does not record where a dead letter came from.
                queue: None,
            })
            .collect())
    }

    fn task_queue(&self, _name: &str) -> Option<String> {
        None
    }

    async fn registers(&self, _id: &InstanceId) -> anyhow::Result<Registers> {
        // Nothing per instance but its facts in the store.
        Ok(Registers::default())
    }

    async fn consumers(&self, _name: &str) -> anyhow::Result<Option<u32>> {
        // Consumers are streams of the workers that read them; nothing counts them.
        Ok(None)
    }

    async fn cleanup(self) -> Outcome {
        Ok(())
    }
}
