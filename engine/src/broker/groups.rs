//! Fair groups' settings and state (`docs/groups.md`): each shard's `groups` HASH and `fair`
//! ZSET. Enqueueing into the fair set, promoting into it and feeding the stream from it are
//! scripts (`enqueue.lua`, `promote.lua`, `feed.lua`, sharing `fair.lua`).

use std::collections::BTreeMap;

use redis::Value;

use super::RedisConnection;
use crate::error::Result;
use crate::keys::ShardKeys;

/// Writes a worker's fair settings into its shards, in one pipelined round trip: the window
/// (when given) and each group's weight.
pub async fn set_fair_settings(
    conn: &mut RedisConnection,
    shards: &[&ShardKeys],
    window: Option<u32>,
    weights: &BTreeMap<String, u32>,
) -> Result<()> {
    let mut pipe = redis::pipe();
    for keys in shards {
        let hset = pipe.cmd("HSET").arg(&keys.groups);
        if let Some(w) = window {
            hset.arg("window").arg(w);
        }
        for (group, weight) in weights {
            hset.arg(format!("w:{group}")).arg(*weight);
        }
        hset.ignore();
    }
    pipe.query_async::<()>(conn).await?;
    Ok(())
}

/// One shard's fair state as read.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FairShard {
    /// The tag of the last task fed into the stream (the virtual clock).
    pub floor: f64,
    /// The window the shard holds (`None`: the default).
    pub window: Option<u64>,
    /// Tasks in the fair set.
    pub waiting: u64,
    /// The lowest tag waiting (the next turn), when any.
    pub head: Option<f64>,
    /// Per group: (waiting count, newest tag) of the groups with tasks waiting.
    pub groups: BTreeMap<String, (u64, f64)>,
    /// Weights set for groups (by workers' `group_weights`).
    pub weights: BTreeMap<String, u64>,
}

/// Reads the fair state of shards, in one pipelined round trip (`HGETALL` of the groups hash,
/// `ZCARD` and the head of the fair set, per shard).
pub async fn fair_shards(conn: &mut RedisConnection, shards: &[&ShardKeys]) -> Result<Vec<FairShard>> {
    if shards.is_empty() {
        return Ok(Vec::new());
    }
    let mut pipe = redis::pipe();
    for keys in shards {
        pipe.cmd("HGETALL").arg(&keys.groups);
        pipe.cmd("ZCARD").arg(&keys.fair);
        pipe.cmd("ZRANGE").arg(&keys.fair).arg(0).arg(0).arg("WITHSCORES");
    }
    let replies: Vec<Value> = pipe.query_async(conn).await?;
    let mut out = Vec::with_capacity(shards.len());
    fn parse<T: redis::FromRedisValue>(v: Value) -> Result<T> {
        redis::from_redis_value(v).map_err(|e| crate::Error::protocol(format!("fair state: {e}")))
    }
    let mut it = replies.into_iter();
    while let (Some(hash), Some(waiting), Some(head)) = (it.next(), it.next(), it.next()) {
        let hash: Vec<(String, String)> = parse(hash)?;
        let waiting: u64 = parse(waiting)?;
        let head: Vec<(Vec<u8>, f64)> = parse(head)?;
        let mut shard = FairShard {
            waiting,
            head: head.first().map(|(_, s)| *s),
            ..FairShard::default()
        };
        let mut lasts = BTreeMap::new();
        for (field, value) in hash {
            let num = || value.parse::<f64>().unwrap_or(0.0);
            if field == "floor" {
                shard.floor = num();
            } else if field == "window" {
                shard.window = value.parse().ok();
            } else if let Some(g) = field.strip_prefix("n:") {
                shard.groups.entry(g.to_owned()).or_insert((0, 0.0)).0 = value.parse().unwrap_or(0);
            } else if let Some(g) = field.strip_prefix("l:") {
                lasts.insert(g.to_owned(), num());
            } else if let Some(g) = field.strip_prefix("w:") {
                shard.weights.insert(g.to_owned(), value.parse().unwrap_or(1));
            }
        }
        for (g, last) in lasts {
            if let Some(entry) = shard.groups.get_mut(&g) {
                entry.1 = last;
            }
        }
        out.push(shard);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::*;
    use crate::broker::lifecycle::{self, EnqueueItem};
    use crate::broker::{RedisTarget, Settle, SettleCtx, ensure_group, feed, promote, read_group, settle};
    use crate::envelope::{Codec, Envelope};
    use crate::keys::Queue;
    use crate::testing::{shared_server, unique_name};

    async fn conn() -> RedisConnection {
        RedisTarget::from(shared_server().client())
            .open(Some(Duration::from_secs(5)))
            .await
            .unwrap()
    }

    fn task(group: &str, n: usize) -> Envelope {
        let mut env = Envelope::new("k", Bytes::from(format!("{group}-{n}")), Codec::Json);
        env.group = Some(group.into());
        env
    }

    async fn enqueue(conn: &mut RedisConnection, keys: &ShardKeys, envs: &[Envelope], due_ms: u64, retention: u64) {
        let items: Vec<EnqueueItem<'_>> = envs
            .iter()
            .map(|env| EnqueueItem {
                keys,
                env,
                due_ms,
                retention_ms: retention,
                events_maxlen: 100,
                unique: None,
            })
            .collect();
        let replies = lifecycle::enqueue(conn, &items, 1).await.unwrap();
        assert!(replies.iter().all(Option::is_none));
    }

    /// Drains the shard one entry at a time as a worker would (read, settle, feed): the
    /// payloads in the order they ran.
    async fn drain(conn: &mut RedisConnection, keys: &ShardKeys, max: usize) -> Vec<String> {
        let mut order = Vec::new();
        while order.len() < max {
            let got = read_group(conn, "w", 1, None, &[keys.stream.as_str()]).await.unwrap();
            let Some((_, entry)) = got.into_iter().next() else {
                break;
            };
            let env = Envelope::from_fields(entry.fields).unwrap();
            order.push(String::from_utf8(env.payload.to_vec()).unwrap());
            let ctx = SettleCtx {
                keys,
                consumer: "w",
                dlq_maxlen: 100,
                now_ms: 1,
            };
            settle(conn, ctx, &[(entry.id, &Settle::Ack)]).await.unwrap();
            feed(conn, keys).await.unwrap();
        }
        order
    }

    async fn shard(conn: &mut RedisConnection, window: u32, weights: &[(&str, u32)]) -> ShardKeys {
        let keys = Queue::new(&unique_name("fair")).unwrap().shard("normal", 0);
        ensure_group(conn, &keys.stream).await.unwrap();
        let weights = weights.iter().map(|(g, w)| ((*g).to_owned(), *w)).collect();
        set_fair_settings(conn, &[&keys], Some(window), &weights).await.unwrap();
        keys
    }

    #[tokio::test]
    async fn a_second_group_is_served_in_turn_not_behind_the_first_groups_backlog() {
        let mut conn = conn().await;
        let keys = shard(&mut conn, 5, &[]).await;
        let a: Vec<Envelope> = (0..300).map(|n| task("a", n)).collect();
        let b: Vec<Envelope> = (0..10).map(|n| task("b", n)).collect();
        enqueue(&mut conn, &keys, &a, 0, 0).await;
        enqueue(&mut conn, &keys, &b, 0, 0).await;
        // Only a window went into the stream; the rest waits its turn.
        let state = &fair_shards(&mut conn, &[&keys]).await.unwrap()[0];
        assert_eq!(state.waiting, 305);
        assert_eq!(state.groups["a"].0, 295);
        assert_eq!(state.groups["b"].0, 10);
        let order = drain(&mut conn, &keys, 400).await;
        assert_eq!(order.len(), 310, "nothing lost");
        let last_b = order.iter().rposition(|p| p.starts_with("b-")).unwrap();
        // The window (5 of a's), then a and b in turn: b's 10th task is about the 25th run,
        // not the 310th.
        assert!(last_b < 5 + 2 * 10 + 2, "b's last task ran {last_b}th: {order:?}");
        // Each group's tasks keep their order.
        for g in ["a", "b"] {
            let mine: Vec<usize> = order
                .iter()
                .filter(|p| p.starts_with(&format!("{g}-")))
                .map(|p| p[2..].parse().unwrap())
                .collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "{g} out of order: {mine:?}");
        }
        let state = &fair_shards(&mut conn, &[&keys]).await.unwrap()[0];
        assert_eq!(state.waiting, 0);
        assert!(state.groups.is_empty(), "no group left: {state:?}");
        assert!(state.floor >= 300.0);
    }

    #[tokio::test]
    async fn weights_give_a_group_that_many_turns() {
        let mut conn = conn().await;
        let keys = shard(&mut conn, 1, &[("heavy", 3)]).await;
        let heavy: Vec<Envelope> = (0..90).map(|n| task("heavy", n)).collect();
        let light: Vec<Envelope> = (0..90).map(|n| task("light", n)).collect();
        enqueue(&mut conn, &keys, &light, 0, 0).await;
        enqueue(&mut conn, &keys, &heavy, 0, 0).await;
        let order = drain(&mut conn, &keys, 200).await;
        assert_eq!(order.len(), 180);
        // Of the first 80 runs, about 3 in 4 are the heavy group's.
        let heavy_first = order[..80].iter().filter(|p| p.starts_with("heavy")).count();
        assert!((55..=65).contains(&heavy_first), "{heavy_first} of 80: {order:?}");
    }

    #[tokio::test]
    async fn a_delayed_grouped_task_is_promoted_through_the_fair_set() {
        let mut conn = conn().await;
        let keys = shard(&mut conn, 2, &[]).await;
        let a: Vec<Envelope> = (0..50).map(|n| task("a", n)).collect();
        enqueue(&mut conn, &keys, &a, 0, 0).await;
        let late = [task("late", 0)];
        enqueue(&mut conn, &keys, &late, 1_000, 0).await;
        let p = promote(&mut conn, &[&keys], 999, 100).await.unwrap();
        assert_eq!((p.moved, p.next_due, p.fair_waiting(0)), (0, Some(1_000), 48));
        let p = promote(&mut conn, &[&keys], 1_000, 100).await.unwrap();
        assert_eq!(
            (p.moved, p.next_due, p.fair_waiting(0)),
            (1, None, 49),
            "into the fair set, not the stream"
        );
        let order = drain(&mut conn, &keys, 100).await;
        assert_eq!(order.len(), 51);
        let at = order.iter().position(|p| p == "late-0").unwrap();
        assert!(at <= 2 + 2, "the promoted task waited one turn behind the window: {at}");
    }

    #[tokio::test]
    async fn the_promoter_feeds_a_stream_no_settle_refilled() {
        let mut conn = conn().await;
        let keys = shard(&mut conn, 3, &[]).await;
        let a: Vec<Envelope> = (0..10).map(|n| task("a", n)).collect();
        enqueue(&mut conn, &keys, &a, 0, 0).await;
        // Read and settled without a feed (a worker that died after its settle, say).
        for _ in 0..3 {
            let got = read_group(&mut conn, "w", 1, None, &[keys.stream.as_str()])
                .await
                .unwrap();
            let ctx = SettleCtx {
                keys: &keys,
                consumer: "w",
                dlq_maxlen: 100,
                now_ms: 1,
            };
            settle(&mut conn, ctx, &[(got[0].1.id, &Settle::Ack)]).await.unwrap();
        }
        let p = promote(&mut conn, &[&keys], 1, 100).await.unwrap();
        assert_eq!(p.fair_waiting(0), 4, "the promoter's round fed three more");
        assert_eq!(drain(&mut conn, &keys, 100).await.len(), 7);
    }
}
