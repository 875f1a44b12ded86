//! A handle to a root instance: its id, its status and its result.

use std::fmt;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use tokio::sync::OnceCell;

use super::no_store;
use super::replies::{lock, ReplyHub, Waiting};
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
/// reply queue: awaited once, kept for every clone of the handle. Only the news is used:
/// the result that stands is read from the store.
pub(super) struct Early {
    waiting: Mutex<Option<Waiting>>,
    finished: OnceCell<bool>,
    /// The reply queue's reader stays while a handle may wait on it, even when the
    /// client that started the instance is gone.
    _hub: Arc<OnceCell<ReplyHub>>,
}

impl Early {
    pub(super) fn new(waiting: Waiting, hub: Arc<OnceCell<ReplyHub>>) -> Self {
        Self {
            waiting: Mutex::new(Some(waiting)),
            finished: OnceCell::new(),
            _hub: hub,
        }
    }

    /// Whether the reply came (`false` when the reply queue's reader stopped first).
    async fn finished(&self) -> bool {
        *self
            .finished
            .get_or_init(|| async {
                let waiting = lock(&self.waiting).take();
                match waiting {
                    Some(w) => w.result().await.is_ok(),
                    None => false,
                }
            })
            .await
    }
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
    /// A handle from [`Client::start`](super::Client::start) learns of the finish on the client's reply queue and
    /// then reads the result (no polling); any other handle waits for it in the instance
    /// store. Either way the result is the one the store recorded first.
    pub async fn result_bytes(&self) -> Result<Vec<u8>, Error> {
        let store = self.store.as_ref().ok_or_else(no_store)?;
        // The reply says that it finished; the store holds the result that stands (the
        // first recorded: the reply of a step redone after a crash may carry another).
        let finished = match &self.early {
            Some(early) => early.finished().await,
            None => false,
        };
        let info = if finished {
            store.read_finished(&self.id).await?
        } else {
            store.wait_finished(&self.id).await?
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
