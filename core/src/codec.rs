//! The versioned envelope around every message body.
//!
//! Layout: the magic bytes `DT`, one byte of envelope version, one byte of kind, then the
//! MessagePack body. Decoding checks all three before touching the body and never panics
//! on untrusted bytes.

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::Error;
use crate::state::{MailboxItem, ResultRecord, TaskMessage};
use crate::Status;

const MAGIC: &[u8; 2] = b"DT";

/// The envelope version this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;

/// What an envelope holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Task = 1,
    Mailbox = 2,
    Result = 3,
    Status = 4,
}

pub(crate) trait Enveloped: Serialize + DeserializeOwned {
    const KIND: Kind;
}

impl Enveloped for TaskMessage {
    const KIND: Kind = Kind::Task;
}
impl Enveloped for MailboxItem {
    const KIND: Kind = Kind::Mailbox;
}
impl Enveloped for ResultRecord {
    const KIND: Kind = Kind::Result;
}
impl Enveloped for Status {
    const KIND: Kind = Kind::Status;
}

pub(crate) fn encode<T: Enveloped>(value: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(MAGIC);
    out.push(ENVELOPE_VERSION);
    out.push(T::KIND as u8);
    // Writing our own types into a Vec cannot fail: every field is a plain serde type.
    rmp_serde::encode::write(&mut out, value).expect("encoding to a Vec cannot fail");
    out
}

pub(crate) fn decode<T: Enveloped>(bytes: &[u8]) -> Result<T, Error> {
    if bytes.len() < 4 || &bytes[..2] != MAGIC {
        return Err(Error::decode("not a dtasks envelope (bad magic bytes)"));
    }
    if bytes[2] != ENVELOPE_VERSION {
        return Err(Error::decode(format!(
            "unknown envelope version {} (this build reads version {ENVELOPE_VERSION})",
            bytes[2]
        )));
    }
    if bytes[3] != T::KIND as u8 {
        return Err(Error::decode(format!(
            "envelope holds kind {} where kind {} was expected",
            bytes[3],
            T::KIND as u8
        )));
    }
    rmp_serde::from_slice(&bytes[4..]).map_err(|e| Error::decode(e.to_string()))
}

/// Encodes a user value (arguments, results) as MessagePack.
pub(crate) fn encode_value<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec(value).map_err(|e| e.to_string())
}

/// Decodes a user value from MessagePack.
pub(crate) fn decode_value<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(bytes).map_err(|e| e.to_string())
}
