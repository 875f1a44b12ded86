//! Finding and managing instances: what the store knows of one, a filtered page of them,
//! and purging finished ones.

use super::Client;
use crate::error::Error;
use crate::protocol::state::InstanceId;
use crate::protocol::Status;
use crate::store::{Filter, HeldCode, HeldCodes, InstanceInfo, Listing, Query, MAX_PAGE};

impl Client {
    /// What the instance store knows of the root instance `id`: its DTask, status (with
    /// what it waits for), start and last change, and result once finished;
    /// [`Error::is_not_found`] when the store holds nothing of it.
    ///
    /// ```
    /// # use dtasks::{dtask, Runtime, Status, WorkerConfig};
    /// #[dtask]
    /// async fn add_one(x: u64) -> u64 { x + 1 }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(add_one))?;
    /// let handle = rt.client().start(add_one(41)).await?;
    /// handle.result().await?;
    /// let info = rt.client().instance(handle.id()).await?;
    /// assert_eq!((info.name.as_str(), info.status), ("add_one", Status::Succeeded));
    /// assert_eq!(info.result::<u64>().transpose()?, Some(42));
    /// # Ok(()) }
    /// ```
    pub async fn instance(&self, id: &InstanceId) -> Result<InstanceInfo, Error> {
        self.store()?
            .get(id)
            .await?
            .ok_or_else(|| Error::not_found(id.as_str()))
    }

    /// A page of the root instances `query` selects, newest start first; pass
    /// [`Listing::next`] to [`Query::after`] for the next page.
    ///
    /// ```
    /// # use dtasks::{dtask, Runtime, Status, WorkerConfig};
    /// use dtasks::store::{Filter, Query};
    /// #[dtask]
    /// async fn add_one(x: u64) -> u64 { x + 1 }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(add_one))?;
    /// for x in 0..3 {
    ///     rt.client().start(add_one(x)).await?.result().await?;
    /// }
    /// let done = Query::new(Filter::new().status(Status::Succeeded)).limit(2)?;
    /// let first = rt.client().list(&done).await?;
    /// assert_eq!(first.instances.len(), 2);
    /// let rest = rt.client().list(&done.after(first.next.unwrap())).await?;
    /// assert_eq!((rest.instances.len(), rest.next), (1, None));
    /// # Ok(()) }
    /// ```
    pub async fn list(&self, query: &Query) -> Result<Listing, Error> {
        self.store()?.list(query).await
    }

    /// Which code the unfinished snapshot-model instances still need: for each DTask
    /// (only `name`'s when given) and fingerprint, how many instances hold a machine saved
    /// by that code, by their last status; sorted by name, then by count (most first).
    /// Code whose fingerprint no instance holds any more, and which no newer code
    /// migrates from, can be removed; an entry that stays needs the code, an `accepts`
    /// or a migration (`#[dtask(snapshot, migrate(..))]`).
    ///
    /// Children are in the store only under roots started by a client made with
    /// [`Client::recording_children`]: their suspended snapshot children are counted
    /// under the children's own DTask and code. The children of other roots write
    /// nothing, and the code they hold cannot be counted: [`HeldCodes::unrecorded_roots`]
    /// says how many unfinished roots do not record theirs (of every DTask, since a child
    /// of `name` may run under any root), and the listing is complete only when it is 0
    /// ([`HeldCodes::counts_children`]). Instances started with [`Client::call`]
    /// record nothing and are not counted.
    ///
    /// It reads every unfinished instance, a page at a time.
    ///
    /// ```
    /// # use dtasks::{dtask, DTask, Registry, Runtime, WorkerConfig};
    /// #[dtask(snapshot)]
    /// async fn approval() -> bool {
    ///     DTask::event::<bool>("approved").await
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), dtasks::Error> {
    /// let rt = Runtime::new(WorkerConfig::new().register(approval))?;
    /// let client = rt.client().recording_children();
    /// let handle = client.start(approval()).await?;
    /// # while client.instance(handle.id()).await?.fingerprint.is_none() {
    /// #     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    /// # }
    /// let found = client.fingerprints(Some("approval")).await?;
    /// assert_eq!(found.held.len(), 1);
    /// assert_eq!(found.held[0].instances, 1);
    /// let mut registry = Registry::new();
    /// registry.register(approval)?;
    /// assert_eq!(Some(found.held[0].fingerprint), registry.fingerprint("approval"));
    /// // Its client records children: none of them can hold code unseen.
    /// assert!(found.counts_children());
    /// # Ok(()) }
    /// ```
    pub async fn fingerprints(&self, name: Option<&str>) -> Result<HeldCodes, Error> {
        // Every unfinished instance, whatever `name`: the roots that hide their children
        // are counted among all of them.
        let filter = Filter::new()
            .status(Status::Pending)
            .status(Status::Running)
            .status(Status::Suspended);
        let mut query = Query::new(filter).limit(MAX_PAGE)?;
        let mut counts: std::collections::BTreeMap<(String, u64), u64> = Default::default();
        let mut unrecorded_roots = 0u64;
        loop {
            let page = self.list(&query).await?;
            for info in &page.instances {
                if info.parent.is_none() && !info.records_children {
                    unrecorded_roots += 1;
                }
                if name.is_some_and(|n| n != info.name) {
                    continue;
                }
                if let Some(fp) = info.fingerprint {
                    *counts.entry((info.name.clone(), fp)).or_default() += 1;
                }
            }
            match page.next {
                Some(next) => query = query.after(next),
                None => break,
            }
        }
        let mut held: Vec<HeldCode> = counts
            .into_iter()
            .map(|((name, fingerprint), instances)| HeldCode {
                name,
                fingerprint,
                instances,
            })
            .collect();
        held.sort_by(|a, b| a.name.cmp(&b.name).then(b.instances.cmp(&a.instances)));
        Ok(HeldCodes {
            held,
            unrecorded_roots,
        })
    }

    /// Removes the finished root instances `filter` selects from the store (running ones
    /// are never removed: cancel them first); returns how many were removed. Their ids
    /// are unknown afterwards ([`Error::is_not_found`]).
    pub async fn purge(&self, filter: &Filter) -> Result<u64, Error> {
        self.store()?.purge(filter).await
    }
}
