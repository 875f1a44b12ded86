//! A handle to a root instance: its id, its status and its result.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use super::replies::{lock, ReplyHub, Waiting};
use super::{no_store, outcome_bytes};
use crate::error::Error;
use crate::protocol::codec::decode_value;
use crate::protocol::message::Status;
use crate::protocol::state::InstanceId;
use crate::store::{InstanceInfo, InstanceStore, Payloads};

/// The result type of handles from [`Client::start_by_name`](super::Client::start_by_name): read them with
/// [`Handle::result_bytes`], or convert with [`Handle::typed`].
#[derive(Debug, Clone, Copy)]
pub enum Untyped {}

/// A handle to a root instance: its id, its status and its result.
pub struct Handle<T> {
    pub(super) id: InstanceId,
    pub(super) store: Option<Arc<dyn InstanceStore>>,
    /// Where a result stored out of band is read.
    pub(super) payloads: Payloads,
    /// The result on its way to this client's reply queue (a handle from a start).
    pub(super) early: Option<Arc<Early>>,
    pub(super) _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            store: self.store.clone(),
            payloads: self.payloads.clone(),
            early: self.early.clone(),
            _t: PhantomData,
        }
    }
}

/// The news that a root this process started finished, as its result comes back on the
/// reply queue: awaited once, kept for every clone of the handle. The result it carries
/// is used only when the worker recorded it, as the first, before replying; else the
/// result that stands is read from the store.
pub(super) struct Early {
    waiting: Mutex<Option<Waiting>>,
    news: OnceCell<News>,
    /// The reply queue's reader stays while a handle may wait on it, even when the
    /// client that started the instance is gone.
    _hub: Arc<OnceCell<ReplyHub>>,
}

impl Early {
    pub(super) fn new(waiting: Waiting, hub: Arc<OnceCell<ReplyHub>>) -> Self {
        Self {
            waiting: Mutex::new(Some(waiting)),
            news: OnceCell::new(),
            _hub: hub,
        }
    }

    /// What the reply said.
    async fn news(&self) -> &News {
        self.news
            .get_or_init(|| async {
                let waiting = lock(&self.waiting).take();
                match waiting {
                    Some(w) => match w.reply().await {
                        Ok(came) if came.recorded => News::Recorded(came.body),
                        Ok(_) => News::Finished,
                        Err(_) => News::None,
                    },
                    None => News::None,
                }
            })
            .await
    }
}

/// What a handle learnt from its reply.
enum News {
    /// Nothing: the reply queue's reader stopped first.
    None,
    /// The instance finished; the result that stands is in the store.
    Finished,
    /// The instance finished with this result (the encoded record), the one the store
    /// recorded.
    Recorded(Vec<u8>),
}

impl<T> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").field("id", &self.id).finish()
    }
}

impl<T> Handle<T> {
    /// The instance's id: keep it to get the result later with [`Client::handle`](super::Client::handle).
    pub fn id(&self) -> &InstanceId {
        &self.id
    }

    /// The instance's status; [`Error::is_not_found`] when the store holds nothing of it.
    pub async fn status(&self) -> Result<Status, Error> {
        Ok(self.info().await?.status)
    }

    /// What the store knows of the instance; [`Error::is_not_found`] when nothing.
    pub async fn info(&self) -> Result<InstanceInfo, Error> {
        let store = self.store.as_ref().ok_or_else(no_store)?;
        store
            .get(&self.id)
            .await?
            .ok_or_else(|| Error::not_found(self.id.as_str()))
    }

    /// Waits for the result and returns it as MessagePack bytes; [`Error::is_not_found`]
    /// at once when the store holds nothing of the instance.
    ///
    /// A handle from [`Client::start`](super::Client::start) learns of the finish on the
    /// client's reply queue (no polling): it returns the result the reply carries when
    /// the worker recorded that result, as the first, before replying (a store that
    /// reports duplicates at once: in memory, PostgreSQL), and else reads the result from
    /// the store (the RabbitMQ-only stream store). Any other handle waits for it in the
    /// instance store. Either way the result is the one the store recorded first.
    pub async fn result_bytes(&self) -> Result<Vec<u8>, Error> {
        let store = self.store.as_ref().ok_or_else(no_store)?;
        // The reply says that it finished; the store holds the result that stands (the
        // first recorded: the reply of a step redone after a crash may carry another),
        // unless the reply says that it carries that one.
        let news = match &self.early {
            Some(early) => early.news().await,
            None => &News::None,
        };
        let info = match news {
            News::Recorded(record) => return self.payloads.resolve(outcome_bytes(record)?).await,
            News::Finished => store.read_finished(&self.id).await?,
            News::None => store.wait_finished(&self.id).await?,
        };
        let bytes = info
            .result_bytes()
            .unwrap_or_else(|| Err(Error::transport("a finished instance without its result")))?;
        // A result stored out of band is read from the payload store.
        self.payloads.resolve(bytes).await
    }

    /// The same instance with a different result type.
    pub fn typed<U>(self) -> Handle<U> {
        Handle {
            id: self.id,
            store: self.store,
            payloads: self.payloads,
            early: self.early,
            _t: PhantomData,
        }
    }
}

impl<T: DeserializeOwned> Handle<T> {
    /// Waits for the instance to finish and returns its result, or
    /// [`Error::is_failed`] with its [`Failure`](crate::Failure).
    pub async fn result(&self) -> Result<T, Error> {
        let bytes = self.result_bytes().await?;
        decode_value(&bytes).map_err(Error::decode)
    }

    /// The result if the instance has finished, without waiting.
    pub async fn try_result(&self) -> Result<Option<T>, Error> {
        match self.info().await?.result_bytes() {
            None => Ok(None),
            Some(bytes) => {
                let bytes = self.payloads.resolve(bytes?).await?;
                decode_value(&bytes).map(Some).map_err(Error::decode)
            }
        }
    }
}
