//! The protocol: what an instance's state is, how every message is framed and encoded,
//! and the one definition of every message dtasks publishes and of its id.
//!
//! Everything that crosses a process boundary is defined here, and nothing here runs
//! user code or talks to a transport: the engine decides which of these messages a
//! delivery causes; a transport moves their bytes.

pub(crate) mod codec;
pub(crate) mod fact;
pub(crate) mod hooks;
pub(crate) mod id;
pub(crate) mod message;
pub(crate) mod outgoing;
pub(crate) mod payload;
pub(crate) mod probe;
pub(crate) mod runs;
pub(crate) mod state;

pub use codec::{ENVELOPE_VERSION, OLDEST_ENVELOPE_VERSION};
pub use message::{Status, Wait};
pub use outgoing::{Destination, Outgoing};
pub use state::InstanceId;
