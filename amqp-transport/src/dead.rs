//! The dead-letter queue `P.dead` for operators: its messages listed without taking them
//! (each is taken with `basic.get` and put back), and replayed to the queue each came
//! from (published there with a confirm, then acked).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicRejectOptions};
use lapin::{BasicProperties, Channel};
use tracing::{info, warn};

use crate::conn;
use crate::error::{AmqpError, Result};
use crate::headers::{
    header_i64, header_str, message_id, H_DTASK, H_INSTANCE, H_QUEUE, H_REASON, H_TRUNCATED,
};
use crate::publish::RawItem;
use crate::shared::Shared;
use crate::topology::{fnv1a, short, Kind};
use crate::transport::AmqpTransport;

/// A message of the dead-letter queue (`P.dead`): what
/// [`AmqpTransport::dead_letters`] lists.
///
/// A worker moves a message there when it cannot handle it at all (a body that does not
/// decode, an envelope of another version): the `x-dtasks-reason` header says why and
/// `x-dtasks-queue` where it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeadLetter {
    /// What [`AmqpTransport::replay_dead_letter`] takes: the message id when the message
    /// has one, else `fnv-` and a hash of its source queue, reason and body (identical
    /// dead letters share it, and replaying either is the same).
    pub id: String,
    /// The message id (the `message_id` property, or the header that holds a longer one).
    pub message_id: Option<String>,
    /// Why it was dead-lettered (`x-dtasks-reason`).
    pub reason: Option<String>,
    /// The queue it came from (`x-dtasks-queue`), where a replay puts it back.
    pub queue: Option<String>,
    /// The instance it is about (`x-dtasks-instance`), when it says.
    pub instance: Option<String>,
    /// The DTask of that instance (`x-dtasks-dtask`), when it says.
    pub dtask: Option<String>,
    /// When it was first published (the `timestamp` property, to the second).
    pub published_at: Option<SystemTime>,
    /// The body, as the worker received it, or its first
    /// [`DEAD_LETTER_BODY`](crate::DEAD_LETTER_BODY) bytes when it was longer.
    pub body: Vec<u8>,
    /// The size of the whole body when it was cut (`x-dtasks-truncated`): such a letter
    /// cannot be replayed.
    pub truncated: Option<usize>,
}

impl DeadLetter {
    fn of(d: &Delivery) -> Self {
        let props = &d.properties;
        let message_id = message_id(props);
        let reason = header_str(props, H_REASON);
        let queue = header_str(props, H_QUEUE);
        let id = message_id.clone().unwrap_or_else(|| {
            let mut key = Vec::with_capacity(d.data.len() + 64);
            for part in [queue.as_deref(), reason.as_deref()] {
                key.extend_from_slice(part.unwrap_or_default().as_bytes());
                key.push(0);
            }
            key.extend_from_slice(&d.data);
            format!("fnv-{:016x}", fnv1a(&key))
        });
        Self {
            id,
            message_id,
            reason,
            queue,
            instance: header_str(props, H_INSTANCE),
            dtask: header_str(props, H_DTASK),
            published_at: props
                .timestamp()
                .map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            body: d.data.clone(),
            truncated: header_i64(props, H_TRUNCATED).map(|n| n.max(0) as usize),
        }
    }

    /// The size of the body in bytes: of the whole body, more than [`DeadLetter::body`]
    /// holds, when it was cut.
    pub fn body_size(&self) -> usize {
        self.truncated.unwrap_or(self.body.len())
    }
}

/// Messages taken from the dead-letter queue on a channel of their own, put back (in the
/// order taken) unless acked; the channel closes after that.
struct Held {
    ch: Channel,
    queue: String,
    taken: Vec<Delivery>,
}

impl Held {
    async fn open(shared: &Shared) -> Result<Self> {
        Ok(Self {
            ch: conn::open_channel(&shared.consume_conns).await?,
            queue: shared.topo.dead(),
            taken: Vec::new(),
        })
    }

    /// Takes the next message; `None` when the queue has no more ready. The second value
    /// is the number of messages left ready after this one.
    async fn take(&mut self) -> Result<Option<(Delivery, u32)>> {
        let got = self
            .ch
            .basic_get(short(&self.queue)?, BasicGetOptions { no_ack: false })
            .await
            .map_err(|e| AmqpError::broker(format!("reading `{}`", self.queue), e))?;
        Ok(got.map(|m| (m.delivery, m.message_count)))
    }

    /// Puts back every message held, in the order taken, and closes the channel. A
    /// message whose reject is lost goes back anyway when the channel closes.
    async fn put_back(self) {
        for d in &self.taken {
            if let Err(e) = d.acker.reject(BasicRejectOptions { requeue: true }).await {
                warn!(error = %e, "a dead letter was not put back at once; the channel's close returns it");
            }
        }
        let _ = self.ch.close(200, "OK".into()).await;
    }
}

/// The properties a replayed message is published with: the original ones, without the
/// headers that the dead-lettering added.
fn replay_properties(props: &BasicProperties) -> BasicProperties {
    let mut headers = props.headers().clone().unwrap_or_default();
    let kept: Vec<_> = headers
        .inner()
        .iter()
        .filter(|(k, _)| {
            let k = k.as_str();
            k != H_REASON && k != H_QUEUE && !k.starts_with("x-delivery-count")
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    headers = Default::default();
    for (k, v) in kept {
        headers.insert(k, v);
    }
    props.clone().with_headers(headers)
}

impl Shared {
    /// The queue kind of `queue` for a replay: only the queues workers consume, under this
    /// transport's prefix.
    fn replay_target(&self, letter: &DeadLetter) -> Result<(String, Kind)> {
        if let Some(size) = letter.truncated {
            return Err(AmqpError::Invalid(format!(
                "dead letter {} was cut from {size} bytes when it was dead-lettered: it \
                 cannot be replayed",
                letter.id
            )));
        }
        let queue = letter.queue.as_deref().ok_or_else(|| {
            AmqpError::Invalid(format!(
                "dead letter {} names no source queue (no {H_QUEUE} header): it cannot be \
                 replayed",
                letter.id
            ))
        })?;
        match self.topo.consumed_kind(queue) {
            Some(kind) => Ok((queue.to_string(), kind)),
            None => Err(AmqpError::Invalid(format!(
                "dead letter {} came from `{queue}`, which is not a queue the workers of \
                 prefix `{}` consume: it is not replayed",
                letter.id,
                self.topo.prefix()
            ))),
        }
    }

    /// Publishes `d` to the queue it came from (with a confirm), then acks it.
    async fn replay_one(&self, d: &Delivery, letter: &DeadLetter) -> Result<String> {
        let (queue, kind) = self.replay_target(letter)?;
        let props = replay_properties(&d.properties);
        let mut item = [RawItem::to_queue(
            queue.clone(),
            kind,
            d.data.clone(),
            props,
        )];
        self.publish_raw(&mut item).await?;
        d.acker
            .ack(BasicAckOptions::default())
            .await
            .map_err(|e| AmqpError::broker("acking a replayed dead letter", e))?;
        info!(id = %letter.id, queue, "dead letter replayed");
        Ok(queue)
    }
}

impl AmqpTransport {
    /// Every message of the dead-letter queue, oldest first, left in the queue.
    ///
    /// Each message is taken with `basic.get` and put back (rejected with requeue) once
    /// all are read; a process that dies meanwhile puts them back by closing its
    /// connection. Nothing is lost, but a message held here is invisible to another
    /// reader of the queue until it is back (two listings at once each see part), and
    /// every listing adds one to each message's delivery count: on a broker that sets a
    /// delivery limit on quorum queues by default (RabbitMQ 4), give the dead-letter queue
    /// a policy without one. The whole queue is held in memory: it is meant to stay small.
    pub async fn dead_letters(&self) -> std::result::Result<Vec<DeadLetter>, dtasks::Error> {
        self.dead_letters_inner().await.map_err(to_error)
    }

    async fn dead_letters_inner(&self) -> Result<Vec<DeadLetter>> {
        let mut held = Held::open(&self.shared).await?;
        let read = async {
            while let Some((d, _)) = held.take().await? {
                held.taken.push(d);
            }
            Ok(())
        }
        .await;
        let letters = held.taken.iter().map(DeadLetter::of).collect();
        held.put_back().await;
        read.map(|()| letters)
    }

    /// Replays the dead letter `id` (a [`DeadLetter::id`]): publishes its body, with its
    /// properties but without the dead-lettering headers, to the queue it came from, waits
    /// for the broker's confirm, and only then acks it. Returns the letter replayed and
    /// the queue it went to.
    ///
    /// [`Error::is_not_found`](dtasks::Error::is_not_found) when the queue holds no such
    /// letter; [`Error::is_bad_input`](dtasks::Error::is_bad_input) when the letter names
    /// no source queue, or one that the workers of this prefix do not consume (it stays).
    /// A process that dies between the confirm and the ack leaves the letter in the queue
    /// as well as replayed: replay at least once.
    pub async fn replay_dead_letter(
        &self,
        id: &str,
    ) -> std::result::Result<(DeadLetter, String), dtasks::Error> {
        self.on_letter(id, async |d, letter| {
            self.shared.replay_one(d, letter).await
        })
        .await
    }

    /// Replays every dead letter that can be replayed, as
    /// [`AmqpTransport::replay_dead_letter`] does one, each to the queue it came from;
    /// returns those replayed with their queues. Letters that cannot be replayed stay in
    /// the queue, with a warning in the log: list them with
    /// [`AmqpTransport::dead_letters`]. Only the letters in the queue when the call begins
    /// are taken, so a replayed message that is dead-lettered again at once is not
    /// replayed twice.
    pub async fn replay_dead_letters(
        &self,
    ) -> std::result::Result<Vec<(DeadLetter, String)>, dtasks::Error> {
        self.on_letters(async |d, letter| match self.shared.replay_one(d, letter).await {
            Ok(queue) => Ok(Some(queue)),
            Err(e @ AmqpError::Invalid(_)) => {
                warn!(id = %letter.id, error = %e, "a dead letter cannot be replayed; it stays");
                Ok(None)
            }
            Err(e) => Err(e),
        })
        .await
    }

    /// Removes the dead letter `id` (a [`DeadLetter::id`]) from the dead-letter queue for
    /// good: a message that should never run (a poison message, one whose work was done
    /// another way). Returns the letter removed. Other letters stay; those read before
    /// it go back to the queue, so their order may change.
    ///
    /// [`Error::is_not_found`](dtasks::Error::is_not_found) when the queue holds no such
    /// letter.
    pub async fn discard_dead_letter(
        &self,
        id: &str,
    ) -> std::result::Result<DeadLetter, dtasks::Error> {
        let (letter, ()) = self.on_letter(id, async |d, _| discard(d).await).await?;
        info!(id = %letter.id, "dead letter discarded");
        Ok(letter)
    }

    /// Removes every dead letter in the queue when the call begins (letters dead-lettered
    /// meanwhile stay); returns those removed, oldest first.
    pub async fn discard_dead_letters(
        &self,
    ) -> std::result::Result<Vec<DeadLetter>, dtasks::Error> {
        let discarded = self
            .on_letters(async |d, _| discard(d).await.map(Some))
            .await?;
        info!(count = discarded.len(), "dead letters discarded");
        Ok(discarded.into_iter().map(|(letter, ())| letter).collect())
    }

    /// Takes the dead letters up to the one with `id` and does `act` with it (which acks
    /// it when it succeeds); puts back every other one taken, and this one when `act`
    /// fails.
    async fn on_letter<T>(
        &self,
        id: &str,
        act: impl AsyncFnOnce(&Delivery, &DeadLetter) -> Result<T>,
    ) -> std::result::Result<(DeadLetter, T), dtasks::Error> {
        let mut held = Held::open(&self.shared).await.map_err(to_error)?;
        let mut outcome = Err(dtasks::Error::not_found(format!("dead letter {id}")));
        loop {
            let (d, _) = match held.take().await {
                Ok(Some(got)) => got,
                Ok(None) => break,
                Err(e) => {
                    outcome = Err(to_error(e));
                    break;
                }
            };
            let letter = DeadLetter::of(&d);
            if letter.id != id {
                held.taken.push(d);
                continue;
            }
            outcome = match act(&d, &letter).await {
                Ok(v) => Ok((letter, v)),
                Err(e) => {
                    held.taken.push(d);
                    Err(to_error(e))
                }
            };
            break;
        }
        held.put_back().await;
        outcome
    }

    /// Does `act` with each dead letter in the queue when the call begins, oldest first:
    /// `Some` means it was acked, `None` that it stays (put back, as every letter taken
    /// after a failure). Returns the letters acted on, with what `act` said.
    async fn on_letters<T>(
        &self,
        mut act: impl AsyncFnMut(&Delivery, &DeadLetter) -> Result<Option<T>>,
    ) -> std::result::Result<Vec<(DeadLetter, T)>, dtasks::Error> {
        let mut held = Held::open(&self.shared).await.map_err(to_error)?;
        let mut done = Vec::new();
        let mut left: Option<u32> = None;
        let outcome = loop {
            if left == Some(0) {
                break Ok(());
            }
            let (d, after) = match held.take().await {
                Ok(Some(got)) => got,
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            };
            // The first message counts those behind it: no more than these are taken.
            left = Some(left.map_or(after, |n| n - 1));
            let letter = DeadLetter::of(&d);
            match act(&d, &letter).await {
                Ok(Some(v)) => done.push((letter, v)),
                Ok(None) => held.taken.push(d),
                Err(e) => {
                    held.taken.push(d);
                    break Err(e);
                }
            }
        };
        held.put_back().await;
        outcome.map_err(to_error)?;
        Ok(done)
    }
}

/// Acks the dead letter `d`: gone for good.
async fn discard(d: &Delivery) -> Result<()> {
    d.acker
        .ack(BasicAckOptions::default())
        .await
        .map(drop)
        .map_err(|e| AmqpError::broker("discarding a dead letter", e))
}

/// A refusal is bad input (the caller asked for what cannot be done); the rest is the
/// broker's.
fn to_error(e: AmqpError) -> dtasks::Error {
    match e {
        AmqpError::Invalid(m) => dtasks::Error::invalid(m),
        e => e.into(),
    }
}
