//! References to values stored out of band (large payloads).
//!
//! A value (an argument tuple, a result, an event value) larger than the payload threshold
//! does not travel in the messages: it is put in a payload store, and the value field
//! holds a *reference* in its place. The field's type does not change (older builds
//! decode the message as before); its bytes are one MessagePack ext value of type
//! [`PAYLOAD_EXT_TYPE`] whose data is the MessagePack array `[key, len, hash, locator]`:
//!
//! - `key` (string): `<instance id>/<hex of the first 16 bytes of the hash>`, under the
//!   instance that wrote it, so that a purge finds it;
//! - `len` (u64): the value's size in bytes;
//! - `hash` (32 bytes): the SHA-256 of the value, checked when it is read back;
//! - `locator` (u64): where the store put it, for a store that reads by position (the
//!   RabbitMQ stream: the offset of its first chunk); 0 for the others.
//!
//! The same value under the same instance always gets the same key, so a step redone
//! after a crash writes the same payload again, harmlessly. `rmp-serde` writes no ext
//! values for plain serde types, so a user value never looks like a reference.
//!
//! A step reads the references of its state before it runs ([`Resolved`]) and decoding a
//! value inside the step (the codec's `decode_value`) takes the bytes from there; clients
//! resolve the results they read themselves.

use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::state::InstanceId;

/// The MessagePack ext type code of a payload reference.
pub const PAYLOAD_EXT_TYPE: i8 = 0x44;

/// The MessagePack marker of an ext value with a 32-bit length (`ext 32`), the one form a
/// reference is written in.
const EXT32: u8 = 0xc9;

/// A reference to a value stored out of band: what a message holds in the value's place.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PayloadRef {
    key: String,
    len: u64,
    #[serde(with = "serde_bytes")]
    hash: Vec<u8>,
    locator: u64,
}

impl fmt::Debug for PayloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PayloadRef")
            .field("key", &self.key)
            .field("len", &self.len)
            .field("locator", &self.locator)
            .finish()
    }
}

impl PayloadRef {
    /// The reference of `value`, written by `instance`, before it is stored (its locator
    /// is set by [`PayloadRef::at`] once the store says where it is).
    pub fn of(instance: &InstanceId, value: &[u8]) -> Self {
        let hash = Sha256::digest(value).to_vec();
        let mut key = String::with_capacity(instance.as_str().len() + 33);
        key.push_str(instance.as_str());
        key.push('/');
        for b in &hash[..16] {
            key.push_str(&format!("{b:02x}"));
        }
        Self {
            key,
            len: value.len() as u64,
            hash,
            locator: 0,
        }
    }

    /// The same reference, at `locator` in its store.
    pub fn at(mut self, locator: u64) -> Self {
        self.locator = locator;
        self
    }

    /// The key the value is stored under: `<instance id>/<32 hex digits>`.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The id of the instance that stored the value (the key up to its last `/`).
    pub fn instance(&self) -> &str {
        self.key.rsplit_once('/').map_or("", |(i, _)| i)
    }

    /// The value's size in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the value is empty (never, for a value stored out of band).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Where the store put the value (a stream offset; 0 for stores that read by key).
    pub fn locator(&self) -> u64 {
        self.locator
    }

    /// Whether `bytes` are the value this reference stands for (size and SHA-256).
    pub fn matches(&self, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.len && Sha256::digest(bytes).as_slice() == self.hash
    }

    /// The reference as the bytes of a value field: one MessagePack ext value.
    pub fn encode(&self) -> Vec<u8> {
        let data = rmp_serde::to_vec(self).expect("encoding to a Vec cannot fail");
        let mut out = Vec::with_capacity(data.len() + 6);
        out.push(EXT32);
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        out.push(PAYLOAD_EXT_TYPE as u8);
        out.extend_from_slice(&data);
        out
    }

    /// The reference that the bytes of a value field hold, if they hold one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let (&first, rest) = bytes.split_first()?;
        if first != EXT32 || rest.len() < 5 || rest[4] != PAYLOAD_EXT_TYPE as u8 {
            return None;
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let data = &rest[5..];
        if data.len() != len {
            return None;
        }
        rmp_serde::from_slice(data).ok()
    }
}

/// What a payload read found.
#[derive(Clone)]
pub(crate) enum Fetched {
    /// The value's bytes.
    Value(Arc<Vec<u8>>),
    /// Why it is not there (gone from the store, corrupt, no store configured).
    Missing(String),
}

/// The values a step's references stand for, read before the step ran, by key.
#[derive(Clone, Default)]
pub(crate) struct Resolved {
    pub(crate) values: HashMap<String, Fetched>,
}

thread_local! {
    static RESOLVED: RefCell<Option<Arc<Resolved>>> = const { RefCell::new(None) };
}

/// Runs `fut` with `resolved` as what [`resolve`] reads, on whatever thread polls it.
pub(crate) async fn with_resolved<F: Future>(resolved: Arc<Resolved>, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(move |cx| {
        let prev = RESOLVED.with(|r| r.borrow_mut().replace(resolved.clone()));
        let out = fut.as_mut().poll(cx);
        RESOLVED.with(|r| *r.borrow_mut() = prev);
        out
    })
    .await
}

/// The bytes `r` stands for, from the values read for the current step.
pub(crate) fn resolve(r: &PayloadRef) -> Result<Arc<Vec<u8>>, String> {
    RESOLVED.with(|cell| {
        let cell = cell.borrow();
        match cell.as_ref().and_then(|res| res.values.get(r.key())) {
            Some(Fetched::Value(v)) => Ok(v.clone()),
            Some(Fetched::Missing(why)) => Err(why.clone()),
            None => Err(format!(
                "the value stored out of band under `{}` ({} bytes) was not read from the \
                 payload store: read it with a handle (`Handle::result`), or in a step",
                r.key(),
                r.len()
            )),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reference_round_trips_and_plain_values_are_not_references() {
        let id = InstanceId::new("order-1").unwrap();
        let r = PayloadRef::of(&id, b"hello").at(42);
        let bytes = r.encode();
        assert_eq!(PayloadRef::decode(&bytes), Some(r.clone()));
        assert_eq!(r.instance(), "order-1");
        assert!(r.matches(b"hello"));
        assert!(!r.matches(b"hellO"));
        assert_eq!(r.key().len(), "order-1/".len() + 32);
        for v in [
            rmp_serde::to_vec(&"text").unwrap(),
            rmp_serde::to_vec(&vec![0u8; 300]).unwrap(),
            rmp_serde::to_vec(&serde_bytes::ByteBuf::from(vec![0xc9; 300])).unwrap(),
            Vec::new(),
            bytes[..bytes.len() - 1].to_vec(),
        ] {
            assert_eq!(PayloadRef::decode(&v), None);
        }
    }
}
