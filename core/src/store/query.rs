//! Selecting instances: a [`Filter`], a [`Query`] (a filter plus a page), and the
//! [`Listing`] a store answers with.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error::Error;
use crate::protocol::{InstanceId, Status};

use super::InstanceInfo;

/// Which instances a [`Query`] or a purge selects: every condition set must hold.
///
/// ```
/// use dtasks::store::Filter;
/// use dtasks::Status;
/// let failed_orders = Filter::new().status(Status::Failed).name("order").id_prefix("eu-");
/// # let _ = failed_orders;
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    statuses: Vec<Status>,
    name: Option<String>,
    id_prefix: Option<String>,
    started_after: Option<SystemTime>,
    started_before: Option<SystemTime>,
    parent: Option<Parent>,
}

/// Which parent a [`Filter`] selects instances by ([`Filter::parent`], [`Filter::roots`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Parent {
    /// Instances a client started: roots.
    None,
    /// The children of this instance.
    Of(InstanceId),
}

impl Filter {
    /// Every instance.
    pub fn new() -> Self {
        Self::default()
    }

    /// Instances in `status` (calls add up: any of the statuses given).
    pub fn status(mut self, status: Status) -> Self {
        if !self.statuses.contains(&status) {
            self.statuses.push(status);
        }
        self
    }

    /// Instances of the DTask `name`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Instances whose id starts with `prefix`.
    pub fn id_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.id_prefix = Some(prefix.into());
        self
    }

    /// Instances started at or after `t`.
    pub fn started_after(mut self, t: SystemTime) -> Self {
        self.started_after = Some(t);
        self
    }

    /// Instances started before `t`.
    pub fn started_before(mut self, t: SystemTime) -> Self {
        self.started_before = Some(t);
        self
    }

    /// The children of `parent` (only children of roots started with
    /// [`Client::recording_children`](crate::Client::recording_children) are in the
    /// store).
    pub fn parent(mut self, parent: InstanceId) -> Self {
        self.parent = Some(Parent::Of(parent));
        self
    }

    /// Roots only: instances a client started, not children.
    pub fn roots(mut self) -> Self {
        self.parent = Some(Parent::None);
        self
    }

    /// The parent selected, if any.
    pub fn parent_selected(&self) -> Option<&Parent> {
        self.parent.as_ref()
    }

    /// The statuses selected (empty: any).
    pub fn statuses(&self) -> &[Status] {
        &self.statuses
    }

    /// The DTask name selected.
    pub fn dtask_name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The id prefix selected.
    pub fn prefix(&self) -> Option<&str> {
        self.id_prefix.as_deref()
    }

    /// The start time range selected: `[after, before)`.
    pub fn started_range(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        (self.started_after, self.started_before)
    }

    /// Whether `info` is selected.
    pub fn matches(&self, info: &InstanceInfo) -> bool {
        (self.statuses.is_empty() || self.statuses.contains(&info.status))
            && self.name.as_deref().is_none_or(|n| info.name == n)
            && self
                .id_prefix
                .as_deref()
                .is_none_or(|p| info.id.as_str().starts_with(p))
            && self.started_after.is_none_or(|t| info.created_at >= t)
            && self.started_before.is_none_or(|t| info.created_at < t)
            && match &self.parent {
                None => true,
                Some(Parent::None) => info.parent.is_none(),
                Some(Parent::Of(p)) => info.parent.as_ref() == Some(p),
            }
    }
}

/// The most instances one page holds.
pub const MAX_PAGE: usize = 1000;

/// A filtered page of instances: [`InstanceStore::list`](super::InstanceStore::list).
/// Pages run from the newest start to the oldest; pass the [`Listing::next`] cursor of
/// one page to [`Query::after`] for the next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    filter: Filter,
    limit: usize,
    after: Option<Cursor>,
}

impl Default for Query {
    fn default() -> Self {
        Self {
            filter: Filter::default(),
            limit: 100,
            after: None,
        }
    }
}

impl Query {
    /// The first page of up to 100 instances that `filter` selects.
    pub fn new(filter: Filter) -> Self {
        Self {
            filter,
            ..Self::default()
        }
    }

    /// At most `limit` instances per page (1 to [`MAX_PAGE`]).
    pub fn limit(mut self, limit: usize) -> Result<Self, Error> {
        if limit == 0 || limit > MAX_PAGE {
            return Err(Error::bad_input(format!(
                "a page holds 1 to {MAX_PAGE} instances, not {limit}"
            )));
        }
        self.limit = limit;
        Ok(self)
    }

    /// The page after the one that ended at `cursor`.
    pub fn after(mut self, cursor: Cursor) -> Self {
        self.after = Some(cursor);
        self
    }

    /// The filter.
    pub fn filter(&self) -> &Filter {
        &self.filter
    }

    /// The page size.
    pub fn page_size(&self) -> usize {
        self.limit
    }

    /// Where the page starts: after this cursor.
    pub fn cursor(&self) -> Option<&Cursor> {
        self.after.as_ref()
    }

    /// Whether `info` belongs on a page after the cursor (for stores that filter in
    /// memory).
    pub fn is_after_cursor(&self, info: &InstanceInfo) -> bool {
        self.after
            .as_ref()
            .is_none_or(|c| Cursor::of(info).sort_key() < c.sort_key())
    }
}

/// Where a page of a listing ended: the start time and id of its last instance. Its text
/// form (`Display`, [`Cursor::parse`]) goes through command lines and URLs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cursor {
    started_ms: u64,
    id: InstanceId,
}

impl Cursor {
    /// The cursor just after `info`.
    pub fn of(info: &InstanceInfo) -> Self {
        Self {
            started_ms: millis(info.created_at),
            id: info.id.clone(),
        }
    }

    /// The start time (milliseconds since the Unix epoch) and id of the last instance.
    pub fn parts(&self) -> (u64, &InstanceId) {
        (self.started_ms, &self.id)
    }

    /// A cursor from its text form.
    pub fn parse(s: &str) -> Result<Self, Error> {
        let bad = || Error::bad_input(format!("`{s}` is not a listing cursor"));
        let (ms, id) = s.split_once('/').ok_or_else(bad)?;
        Ok(Self {
            started_ms: ms.parse().map_err(|_| bad())?,
            id: InstanceId::new(id).map_err(|_| bad())?,
        })
    }

    /// Newest first: a larger key sorts earlier.
    fn sort_key(&self) -> (u64, &str) {
        (self.started_ms, self.id.as_str())
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.started_ms, self.id)
    }
}

/// A page of instances.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct Listing {
    /// The instances, newest start first.
    pub instances: Vec<InstanceInfo>,
    /// Where the next page starts, when there may be one.
    pub next: Option<Cursor>,
}

impl Listing {
    /// A page of `instances` (sorted newest first, at most `query`'s page size plus
    /// one): the extra one, when there, only says that a next page exists.
    pub fn page(mut instances: Vec<InstanceInfo>, query: &Query) -> Self {
        let more = instances.len() > query.limit;
        instances.truncate(query.limit);
        let next = if more {
            instances.last().map(Cursor::of)
        } else {
            None
        };
        Self { instances, next }
    }
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` milliseconds after the Unix epoch.
pub fn from_millis(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

/// Sorts `instances` newest start first (ties by id, descending), as pages run.
pub fn sort_newest_first(instances: &mut [InstanceInfo]) {
    instances.sort_by(|a, b| {
        (millis(b.created_at), b.id.as_str()).cmp(&(millis(a.created_at), a.id.as_str()))
    });
}
