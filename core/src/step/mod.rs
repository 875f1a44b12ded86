//! What every step of every instance runs in, whatever its execution model: the context
//! that DTask operations reach through a thread-local slot, and the driver that polls the
//! body until nothing local can make progress.

pub(crate) mod context;
pub(crate) mod driver;

pub(crate) use context::{with, CancelChild, Clock, Exec, Frame, Saved};
pub(crate) use driver::{drive, BodyFuture, StepEnd};
