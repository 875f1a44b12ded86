//! A refund that waits for a human's approval, or gives up after a timeout.
//!
//! Without `AMQP_URL`: a demo on the embedded in-memory runtime (one request approved,
//! one rejected, one that expires).
//!
//! With `AMQP_URL` (and workers running: `cargo run -p dtasks-examples --bin worker`,
//! with the same `DATABASE_URL` when they use PostgreSQL), each step from the command
//! line, from any process:
//!
//! ```text
//! approval start <id> [timeout_s]    start a refund request under the id
//! approval status <id>               its status and what it waits for
//! approval approve <id> <reviewer>   send the event `approval`
//! approval reject <id> <reason>
//! approval result <id>               wait for the outcome
//! ```

use anyhow::{bail, Context};
use dtasks::{InstanceId, Runtime, WorkerConfig};
use dtasks_examples::{init_logs, refund, refund_with_approval, Decision, RefundOutcome};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_logs("warn");
    let args: Vec<String> = std::env::args().skip(1).collect();
    if std::env::var_os("AMQP_URL").is_none() {
        return demo().await;
    }
    let (client, transport) = dtasks_cli::connect_from_env().await?;
    let arg = |i: usize, what: &str| {
        args.get(i)
            .cloned()
            .with_context(|| format!("missing {what}; see the usage at the top of approval.rs"))
    };
    let id = InstanceId::new(arg(1, "the instance id")?)?;
    match arg(0, "a command (start, status, approve, reject, result)")?.as_str() {
        "start" => {
            let secs: u64 = args.get(2).map(|s| s.parse()).transpose()?.unwrap_or(3600);
            let h = client
                .start_with_id(id, refund_with_approval(7, 1999, secs * 1000))
                .await?;
            println!("started {}: waiting up to {secs} s for an approval", h.id());
        }
        "status" => {
            let status = client.status(&id).await?;
            let waits = client.waiting_for(&id).await?;
            println!("{id}: {status:?}, waiting for {waits:?}");
        }
        "approve" => {
            let by = arg(2, "the reviewer's name")?;
            client
                .signal(&id, "approval", &Decision::Approve(by))
                .await?;
            println!("sent approval to {id}");
        }
        "reject" => {
            let why = arg(2, "the reason")?;
            client
                .signal(&id, "approval", &Decision::Reject(why))
                .await?;
            println!("sent rejection to {id}");
        }
        "result" => {
            let outcome: RefundOutcome = client.handle(id.clone()).result().await?;
            println!("{id}: {outcome:?}");
        }
        other => bail!("unknown command `{other}`; see the usage at the top of approval.rs"),
    }
    // Its client's reply queue, if a command made one, goes with it.
    transport.close().await;
    Ok(())
}

async fn demo() -> anyhow::Result<()> {
    println!("refunds with approval on the embedded in-memory runtime (set AMQP_URL for RabbitMQ)");
    let rt = Runtime::new(
        WorkerConfig::new()
            .register(refund_with_approval)
            .register(refund),
    )?;
    let client = rt.client();
    let approved = client.start(refund_with_approval(1, 500, 60_000)).await?;
    let rejected = client.start(refund_with_approval(2, 700, 60_000)).await?;
    let expires = client.start(refund_with_approval(3, 900, 300)).await?;
    // An event may be sent before the instance waits for it: it is kept.
    client
        .signal(approved.id(), "approval", &Decision::Approve("Ada".into()))
        .await?;
    client
        .signal(
            rejected.id(),
            "approval",
            &Decision::Reject("outside the return window".into()),
        )
        .await?;
    for (what, h) in [("1", &approved), ("2", &rejected), ("3", &expires)] {
        println!("refund {what}: {:?}", h.result().await?);
    }
    rt.shutdown().await?;
    Ok(())
}
