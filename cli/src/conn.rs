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

/// A client of the deployment, on the store the environment selects. The deployment
/// must exist: a mistyped prefix or schema is an error, not a new, empty deployment.
pub(crate) async fn client() -> Result<Client, Exit> {
    let (client, _transport) = crate::connect_existing(broker_config())
        .await
        .doing(|| "connecting".to_string())?;
    Ok(client)
}

/// A client of the deployment and its transport, for a start: the deployment's queues
/// and schema are made when this is its first process, as a worker would.
pub(crate) async fn starting() -> Result<(Client, AmqpTransport), Exit> {
    crate::connect(broker_config())
        .await
        .doing(|| "connecting".to_string())
}

/// The transport alone (for the dead letters, which need no store), of a deployment that
/// exists.
pub(crate) async fn transport() -> Result<AmqpTransport, Exit> {
    AmqpTransport::connect(broker_config().with_existing_deployment(true))
        .await
        .doing(|| "connecting to the broker".to_string())
}
