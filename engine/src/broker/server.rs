//! What the server says about itself (`INFO`) and the durability waits (`WAIT`, `WAITAOF`)
//! that follow a write on the same connection.

use redis::aio::ConnectionManager;
use redis::{Pipeline, Value};

use crate::durability::{Durability, ServerInfo};
use crate::error::{Error, Result};

/// `INFO server memory persistence replication`, parsed (one round trip, at start).
pub async fn server_info(conn: &mut ConnectionManager) -> Result<ServerInfo> {
    let text: String = redis::cmd("INFO")
        .arg("server")
        .arg("memory")
        .arg("persistence")
        .arg("replication")
        .query_async(conn)
        .await?;
    ServerInfo::parse(&text)
}

/// Appends the wait `durability` asks for (nothing for `Fast`) as the pipeline's last command,
/// not ignored: [`check_wait`] reads its reply. On a multiplexed connection it covers every
/// write this connection sent before it, the pipeline's included.
pub fn push_wait(pipe: &mut Pipeline, durability: Durability) {
    match durability {
        Durability::Fast => {}
        Durability::Replicated { replicas, timeout } => {
            pipe.cmd("WAIT").arg(replicas).arg(timeout.as_millis() as u64);
        }
        Durability::Fsync { timeout } => {
            pipe.cmd("WAITAOF").arg(1).arg(0).arg(timeout.as_millis() as u64);
        }
    }
}

/// Turns a `WAIT` / `WAITAOF` reply into `Ok` or [`Error::NotDurable`].
pub fn check_wait(durability: Durability, reply: &Value) -> Result<()> {
    let (acked, wanted, timeout) = match (durability, reply) {
        (Durability::Fast, _) => return Ok(()),
        (Durability::Replicated { replicas, timeout }, Value::Int(n)) => (*n as u32, replicas, timeout),
        (Durability::Fsync { timeout }, Value::Array(counts)) => match counts.first() {
            Some(Value::Int(local)) => (*local as u32, 1, timeout),
            _ => return Err(Error::protocol(format!("WAITAOF reply {reply:?}"))),
        },
        (_, other) => return Err(Error::protocol(format!("WAIT reply {other:?}"))),
    };
    if acked >= wanted {
        return Ok(());
    }
    Err(Error::NotDurable {
        wanted: durability.to_string(),
        acked,
        timeout_ms: timeout.as_millis() as u64,
    })
}

/// Waits for `durability` on its own (after writes already sent on this connection): one
/// round trip, none for `Fast`.
pub async fn wait_durable(conn: &mut ConnectionManager, durability: Durability) -> Result<()> {
    if !durability.waits() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    push_wait(&mut pipe, durability);
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    check_wait(durability, replies.first().unwrap_or(&Value::Nil))
}
