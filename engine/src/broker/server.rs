//! What the server says about itself (`INFO`) and the durability waits (`WAIT`, `WAITAOF`)
//! that follow a write on the same connection.

use crate::broker::RedisConnection;
use redis::Value;

use crate::durability::{Durability, ServerInfo};
use crate::error::{Error, Result};

/// `INFO server memory persistence replication cluster`, parsed (one round trip, at start).
/// On a Redis Cluster every master answers and the result is what all of them can promise
/// ([`ServerInfo::weakest`]). A plain connection to a cluster node is refused here with
/// [`Error::ClusterNode`]: its commands would fail with `MOVED` one by one.
pub async fn server_info(conn: &mut RedisConnection) -> Result<ServerInfo> {
    let reply: Value = redis::cmd("INFO")
        .arg("server")
        .arg("memory")
        .arg("persistence")
        .arg("replication")
        .arg("cluster")
        .query_async(conn)
        .await?;
    let texts: Vec<String> = match reply {
        Value::Map(nodes) => nodes
            .into_iter()
            .map(|(_, v)| super::string(v))
            .collect::<Result<_>>()?,
        other => vec![super::string(other)?],
    };
    let infos = texts.iter().map(|t| ServerInfo::parse(t)).collect::<Result<Vec<_>>>()?;
    let info = ServerInfo::weakest(infos).ok_or_else(|| Error::protocol("INFO answered by no node"))?;
    if info.cluster_enabled && !conn.is_cluster() {
        return Err(Error::ClusterNode("its INFO says cluster_enabled:1".into()));
    }
    Ok(info)
}

/// The wait `durability` asks for (`None` for `Fast`). On a multiplexed connection it covers
/// every write this connection sent before it; [`check_wait`] reads its reply.
fn wait_command(durability: Durability) -> Option<redis::Cmd> {
    match durability {
        Durability::Fast => None,
        Durability::Replicated { replicas, timeout } => {
            let mut cmd = redis::cmd("WAIT");
            cmd.arg(replicas).arg(timeout.as_millis() as u64);
            Some(cmd)
        }
        Durability::Fsync { timeout } => {
            let mut cmd = redis::cmd("WAITAOF");
            cmd.arg(1).arg(0).arg(timeout.as_millis() as u64);
            Some(cmd)
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

/// Waits for `durability` after writes already sent on this connection to the shards whose
/// keys include `keys` (on a Redis Cluster, on each of those shards' masters; elsewhere `keys`
/// does not matter): one round trip, none for `Fast`.
pub async fn wait_durable(conn: &mut RedisConnection, durability: Durability, keys: &[&str]) -> Result<()> {
    let Some(cmd) = wait_command(durability) else {
        return Ok(());
    };
    for reply in conn.on_masters_of(&cmd, keys).await? {
        check_wait(durability, &reply)?;
    }
    Ok(())
}
