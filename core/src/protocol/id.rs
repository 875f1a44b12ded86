//! [`InstanceId`]: the identifier of an instance, a root's chosen or random, a child's
//! derived from its parent's.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The identifier of a DTask instance.
///
/// Root instances get a random id (or one chosen by the caller of
/// [`Client::start_with_id`](crate::Client::start_with_id)); children get a deterministic
/// id derived from their parent's id and the position of the call in the parent, so a
/// replayed or redelivered start names the same child.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InstanceId(String);

impl InstanceId {
    /// Creates a fresh random id.
    pub fn random() -> Self {
        Self(
            uuid::Uuid::from_u128(super::hooks::random_u128())
                .simple()
                .to_string(),
        )
    }

    /// Uses `id` as an instance id. Ids are limited to 200 bytes of ASCII letters, digits
    /// and `-_.:` so they can name broker resources.
    pub fn new(id: impl Into<String>) -> Result<Self, crate::error::Error> {
        let id = id.into();
        if id.len() <= 200 && Self::well_formed(&id) {
            Ok(Self(id))
        } else {
            Err(crate::error::Error::bad_input(format!(
                "`{id}` is not a valid instance id (1-200 of A-Z a-z 0-9 - _ . :)"
            )))
        }
    }

    /// An id read back from a message or a resume token, which may name a child: checked
    /// like [`InstanceId::new`] but of any length, since a child's id is its parent's and
    /// its position in the parent (`parent.seq`) and grows with the nesting. A transport
    /// that names a broker resource after an id must shorten a long one itself.
    pub fn from_message(id: impl Into<String>) -> Result<Self, crate::error::Error> {
        let id = id.into();
        if Self::well_formed(&id) {
            Ok(Self(id))
        } else {
            Err(crate::error::Error::bad_input(format!(
                "`{id}` is not a valid instance id (A-Z a-z 0-9 - _ . :)"
            )))
        }
    }

    fn well_formed(id: &str) -> bool {
        !id.is_empty()
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// An id that is known to be valid (a prefix of a valid id).
    pub(crate) fn from_trusted(id: &str) -> Self {
        Self(id.to_string())
    }

    /// The id of the child this instance starts at journal position `seq`: `{id}.{seq}`
    /// (the positions of a journal summary's steps).
    pub fn child(&self, seq: u32) -> Self {
        Self(format!("{}.{seq}", self.0))
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
