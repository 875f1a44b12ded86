//! Connecting a command: the deployment's broker, and its store when the command needs
//! one.

use dtasks::Client;
use dtasks_amqp::{AmqpConfig, AmqpTransport};

use crate::exit::{Doing, Exit};

/// The broker of the environment. A command-line process is short-lived: its clients
/// make no reply queue (which would outlive it by the result retention).
fn broker_config() -> AmqpConfig {
    AmqpConfig::from_env().with_reply_queues(false)
}

/// A client of the deployment, on the store the environment selects.
pub(crate) async fn client() -> Result<Client, Exit> {
    Ok(connected().await?.0)
}

/// A client of the deployment and its transport.
pub(crate) async fn connected() -> Result<(Client, AmqpTransport), Exit> {
    crate::connect(broker_config())
        .await
        .doing(|| "connecting".to_string())
}

/// The transport alone (for the dead letters, which need no store).
pub(crate) async fn transport() -> Result<AmqpTransport, Exit> {
    AmqpTransport::connect(broker_config())
        .await
        .doing(|| "connecting to the broker".to_string())
}
