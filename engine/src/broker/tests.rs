//! The broker's behaviour against a real `redis-server`: fencing, trimming, drops, lease
//! renewal and reclaiming.
//!
//! Tests that keep to a queue of their own (`unique_name`) share the binary's one server; the
//! registry and pause-flag tests read keys that span the server, so they start their own.

use std::time::Duration;

use redis::ToRedisArgs;

use super::*;
use crate::durability::Durability;
use crate::envelope::{Codec, Envelope};
use crate::keys::Queue;
use crate::keys::ShardKeys;
use crate::testing::{RedisServer, shared_server, unique_name};
use bytes::Bytes;

/// One entry read by consumer `stale`, on a queue of its own.
async fn setup(server: &RedisServer) -> (RedisConnection, ShardKeys, StreamId) {
    let mut conn = RedisTarget::from(server.client())
        .open(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let keys = Queue::new(&unique_name("fence")).unwrap().shard("normal", 0);
    ensure_group(&mut conn, &keys.stream).await.unwrap();
    let env = Envelope::new("k", Bytes::from_static(b"1"), Codec::Json);
    add_ready(&mut conn, &[(&keys, &env)], Durability::Fast).await.unwrap();
    let got = read_group(&mut conn, "stale", 10, None, &[keys.stream.as_str()])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let id = got.into_iter().next().unwrap().1.id;
    (conn, keys, id)
}

fn reclaim_args<'a>(keys: &'a ShardKeys, consumer: &'a str) -> ReclaimArgs<'a> {
    ReclaimArgs {
        keys,
        consumer,
        lease: Duration::ZERO,
        cursor: SCAN_START,
        count: 10,
        max_deliveries: 5,
    }
}

#[tokio::test]
async fn stale_worker_ack_after_reclaim_is_rejected() {
    let server = shared_server();
    let (mut conn, keys, id) = setup(server).await;
    // Another worker takes the entry over (its lease ran out).
    let taken = reclaim(&mut conn, reclaim_args(&keys, "fresh")).await.unwrap();
    assert_eq!(taken.entries.len(), 1);
    // The stale worker's outcomes are fenced off: ack, retry and bury alike.
    let ctx = SettleCtx {
        keys: &keys,
        consumer: "stale",
        dlq_maxlen: 100,
        now_ms: 1,
    };
    for op in [
        Settle::Ack,
        Settle::Retry {
            due_ms: 0,
            attempt: 1,
            error: "x".into(),
        },
        Settle::Bury {
            reason: DeadReason::Fatal,
            error: "x".into(),
            attempt: Some(1),
        },
    ] {
        let stale = settle(&mut conn, ctx, &[(id, &op)]).await.unwrap();
        assert_eq!(stale, std::slice::from_ref(&id), "{op:?} by a stale worker was applied");
    }
    // The entry is untouched: still in the stream, still pending for the new owner.
    let len: u64 = redis::cmd("XLEN")
        .arg(&keys.stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 1);
    assert_eq!(
        owned_ids(&mut conn, &keys, "fresh", 10).await.unwrap(),
        std::slice::from_ref(&id)
    );
    let dlq: u64 = redis::cmd("XLEN").arg(&keys.dlq).query_async(&mut conn).await.unwrap();
    assert_eq!(dlq, 0);
    // Each dropped outcome is counted in the shard's stats, where operators see it.
    let fenced: u64 = redis::cmd("HGET")
        .arg(&keys.stats)
        .arg("fenced")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(fenced, 3);
    // The owner's ack goes through and removes it.
    let ctx = SettleCtx {
        consumer: "fresh",
        ..ctx
    };
    assert!(settle(&mut conn, ctx, &[(id, &Settle::Ack)]).await.unwrap().is_empty());
    let len: u64 = redis::cmd("XLEN")
        .arg(&keys.stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 0);
    // Settling twice is a no-op reported as stale, never a double count.
    assert_eq!(settle(&mut conn, ctx, &[(id, &Settle::Ack)]).await.unwrap(), [id]);
    let done: u64 = redis::cmd("HGET")
        .arg(&keys.stats)
        .arg("done")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(done, 1);
}

/// The shard's stats counter `name` (0 when unset).
async fn counter(conn: &mut RedisConnection, keys: &ShardKeys, name: &str) -> u64 {
    let v: Option<u64> = redis::cmd("HGET")
        .arg(&keys.stats)
        .arg(name)
        .query_async(conn)
        .await
        .unwrap();
    v.unwrap_or(0)
}

#[tokio::test]
async fn fresh_acks_delete_count_done_and_count_a_second_try_as_fenced_with_either_command() {
    let server = shared_server();
    let mut probe = RedisTarget::from(server.client())
        .open(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let version = server_info(&mut probe).await.unwrap().version;
    let mut commands = vec![AckCommand::AckThenDel];
    if version >= (8, 2, 0) {
        commands.push(AckCommand::AckDel);
    } else {
        eprintln!("XACKDEL not tested: this server is {version:?}, XACKDEL needs Redis 8.2");
    }
    assert_eq!(AckCommand::for_version(version), *commands.last().unwrap());
    // Both ways of sending them: redis-rs's connection, and the engine's own link (the
    // acker's on one node), whose replies are decoded by hand.
    for (how, raw) in commands.into_iter().flat_map(|how| [(how, false), (how, true)]) {
        let mut link = if raw {
            let link = RedisTarget::from(server.client())
                .open_raw(Duration::from_secs(5))
                .await
                .unwrap();
            Some(link.expect("a plain single-node URL gets the engine's own link"))
        } else {
            None
        };
        let (mut conn, keys, first) = setup(server).await;
        // Three more entries delivered to the same consumer, one left pending.
        let env = Envelope::new("k", Bytes::from_static(b"1"), Codec::Json);
        for _ in 0..3 {
            add_ready(&mut conn, &[(&keys, &env)], Durability::Fast).await.unwrap();
        }
        let got = read_group(&mut conn, "stale", 10, None, &[keys.stream.as_str()])
            .await
            .unwrap();
        let ids: Vec<StreamId> = std::iter::once(first)
            .chain(got.into_iter().map(|(_, e)| e.id))
            .collect();
        assert_eq!(ids.len(), 4);
        assert_eq!(
            ack(&mut conn, link.as_mut(), &keys, &ids[..3], how).await,
            0,
            "{how:?} raw {raw}"
        );
        assert_eq!(counter(&mut conn, &keys, "done").await, 3, "{how:?} raw {raw}");
        // Only the entry not acked is left, in the stream and pending.
        let len: u64 = redis::cmd("XLEN")
            .arg(&keys.stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 1, "{how:?} raw {raw}");
        assert_eq!(
            owned_ids(&mut conn, &keys, "stale", 10).await.unwrap(),
            [ids[3]],
            "{how:?} raw {raw}"
        );
        // A second try of the same acks (its reply was lost) changes nothing but `fenced`:
        // `done` stays exact.
        assert_eq!(
            ack(&mut conn, link.as_mut(), &keys, &ids[1..], how).await,
            2,
            "{how:?} raw {raw}"
        );
        assert_eq!(counter(&mut conn, &keys, "done").await, 4, "{how:?} raw {raw}");
        assert_eq!(counter(&mut conn, &keys, "fenced").await, 2, "{how:?} raw {raw}");
        let len: u64 = redis::cmd("XLEN")
            .arg(&keys.stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(len, 0, "{how:?} raw {raw}");
        assert!(owned_ids(&mut conn, &keys, "stale", 10).await.unwrap().is_empty());
    }
}

/// `ack_fresh` of one shard: on redis-rs's connection, or on `link` with another shard's
/// acks beside it in the same round trip (an entry that was never there: stale).
async fn ack(
    conn: &mut RedisConnection,
    link: Option<&mut reader::DedicatedConnection>,
    keys: &ShardKeys,
    ids: &[StreamId],
    how: AckCommand,
) -> u64 {
    let Some(link) = link else {
        return ack_fresh(conn, keys, ids, how).await.unwrap();
    };
    let other = Queue::new(&unique_name("ack-other")).unwrap().shard("normal", 0);
    ensure_group(conn, &other.stream).await.unwrap();
    let none = [StreamId { ms: 1, seq: 1 }];
    let stale = link.ack_fresh(&[(keys, ids), (&other, &none)], how).await.unwrap();
    assert_eq!(stale[1], 1, "the other shard's one ack is stale");
    assert_eq!(counter(conn, &other, "fenced").await, 1);
    assert_eq!(counter(conn, &other, "done").await, 0);
    stale[0]
}

#[tokio::test]
async fn a_shard_is_dropped_only_when_empty_unless_forced() {
    let server = shared_server();
    let mut conn = RedisTarget::from(server.client())
        .open(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let keys = Queue::new(&unique_name("drop")).unwrap().shard("normal", 0);
    ensure_group(&mut conn, &keys.stream).await.unwrap();
    let exists = |conn: &mut RedisConnection| {
        let mut conn = conn.clone();
        let stream = keys.stream.clone();
        async move {
            redis::cmd("EXISTS")
                .arg(stream)
                .query_async::<u64>(&mut conn)
                .await
                .unwrap()
        }
    };
    // An empty stream (only its group) goes.
    assert!(drop_shard(&mut conn, &keys, false).await.unwrap());
    assert_eq!(exists(&mut conn).await, 0);
    // One task, even one that arrived after the caller looked, keeps it; force drops it.
    ensure_group(&mut conn, &keys.stream).await.unwrap();
    let env = Envelope::new("k", Bytes::from_static(b"1"), Codec::Json);
    add_ready(&mut conn, &[(&keys, &env)], Durability::Fast).await.unwrap();
    assert!(!drop_shard(&mut conn, &keys, false).await.unwrap());
    assert_eq!(exists(&mut conn).await, 1);
    assert!(drop_shard(&mut conn, &keys, true).await.unwrap());
    assert_eq!(exists(&mut conn).await, 0);
}

#[tokio::test]
async fn settling_deletes_only_settled_entries() {
    let server = shared_server();
    let mut conn = RedisTarget::from(server.client())
        .open(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let keys = Queue::new(&unique_name("trim")).unwrap().shard("normal", 0);
    ensure_group(&mut conn, &keys.stream).await.unwrap();
    let add = |n: usize| -> Vec<Envelope> {
        (0..n)
            .map(|_| Envelope::new("k", Bytes::from_static(b"1"), Codec::Json))
            .collect()
    };
    let envs = add(3);
    let batch: Vec<(&ShardKeys, &Envelope)> = envs.iter().map(|e| (&keys, e)).collect();
    add_ready(&mut conn, &batch, Durability::Fast).await.unwrap();
    let stream = [keys.stream.as_str()];
    let a = read_group(&mut conn, "a", 1, None, &stream).await.unwrap();
    let b = read_group(&mut conn, "b", 2, None, &stream).await.unwrap();
    let (e1, e2, e3) = (&a[0].1.id, &b[0].1.id, &b[1].1.id);
    let later = add(1);
    add_ready(&mut conn, &[(&keys, &later[0])], Durability::Fast)
        .await
        .unwrap();
    let ctx = |consumer| SettleCtx {
        keys: &keys,
        consumer,
        dlq_maxlen: 100,
        now_ms: 1,
    };
    let ids = |rows: Vec<StreamEntry>| rows.into_iter().map(|e| e.id).collect::<Vec<_>>();
    // b settles its newer entry while a's older one is pending: only that one goes.
    settle(&mut conn, ctx("b"), &[(*e3, &Settle::Ack)]).await.unwrap();
    let left = ids(range(&mut conn, &keys.stream, RangeStart::First, 10).await.unwrap());
    assert_eq!(left[..2], [*e1, *e2]);
    assert_eq!(left.len(), 3, "the undelivered entry stays");
    // a settles the oldest: b's pending entry and the undelivered one stay.
    settle(&mut conn, ctx("a"), &[(*e1, &Settle::Ack)]).await.unwrap();
    let left = ids(range(&mut conn, &keys.stream, RangeStart::First, 10).await.unwrap());
    assert_eq!(left[0], *e2);
    assert_eq!(left.len(), 2);
    // Nothing pending after b's last settle: the undelivered entry still stays, and runs.
    settle(&mut conn, ctx("b"), &[(*e2, &Settle::Ack)]).await.unwrap();
    assert_eq!(
        range(&mut conn, &keys.stream, RangeStart::First, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    assert_eq!(read_group(&mut conn, "a", 10, None, &stream).await.unwrap().len(), 1);
}

#[tokio::test]
async fn lease_renewal_never_steals_a_reclaimed_entry() {
    let server = shared_server();
    let (mut conn, keys, id) = setup(server).await;
    reclaim(&mut conn, reclaim_args(&keys, "fresh")).await.unwrap();
    // The stale worker's heartbeat renews only what it still owns: nothing.
    assert_eq!(extend(&mut conn, &keys, "stale", &[id]).await.unwrap(), 0);
    assert_eq!(
        owned_ids(&mut conn, &keys, "fresh", 10).await.unwrap(),
        std::slice::from_ref(&id)
    );
    // Only ids the worker says it holds are renewed.
    assert_eq!(
        extend(&mut conn, &keys, "fresh", &[StreamId { ms: 1, seq: 1 }])
            .await
            .unwrap(),
        0
    );
    // Renewal does not raise the delivery count (JUSTID).
    assert_eq!(extend(&mut conn, &keys, "fresh", &[id]).await.unwrap(), 1);
    let rows = pending(&mut conn, &keys.stream, 10).await.unwrap();
    assert_eq!(rows[0].deliveries, 2, "deliveries: one read plus one reclaim");
}

#[tokio::test]
async fn entries_delivered_past_the_limit_are_buried_as_poison() {
    let server = shared_server();
    let (mut conn, keys, _id) = setup(server).await;
    let args = ReclaimArgs {
        max_deliveries: 1,
        ..reclaim_args(&keys, "fresh")
    };
    let got = reclaim(&mut conn, args).await.unwrap();
    assert_eq!((got.entries.len(), got.poison.len()), (0, 1));
    let (entry, deliveries) = &got.poison[0];
    assert_eq!(*deliveries, 2);
    // Set apart, owned by the reclaimer, not yet buried: the settle every outcome takes does.
    assert_eq!(pending(&mut conn, &keys.stream, 10).await.unwrap().len(), 1);
    let bury = poison_outcome(*deliveries, 1);
    let ctx = SettleCtx {
        keys: &keys,
        consumer: "fresh",
        dlq_maxlen: 100,
        now_ms: 1,
    };
    assert!(settle(&mut conn, ctx, &[(entry.id, &bury)]).await.unwrap().is_empty());
    let dlq = range(&mut conn, &keys.dlq, RangeStart::First, 10).await.unwrap();
    let fields: std::collections::HashMap<String, String> = dlq[0]
        .fields
        .iter()
        .map(|(k, v)| (String::from_utf8_lossy(k).into(), String::from_utf8_lossy(v).into()))
        .collect();
    assert_eq!(fields["reason"], "poison");
    assert_eq!(fields["deliveries"], "2");
    assert_eq!(fields["error"], "delivered 2 times without an outcome (limit 1)");
    assert!(pending(&mut conn, &keys.stream, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn reclaim_counts_deleted_entries_as_lost() {
    let server = shared_server();
    let (mut conn, keys, id) = setup(server).await;
    // Someone deletes the entry behind the engine's back while it is pending.
    delete_entries(&mut conn, &keys.stream, &[id]).await.unwrap();
    let got = reclaim(&mut conn, reclaim_args(&keys, "fresh")).await.unwrap();
    assert_eq!((got.entries.len(), got.lost), (0, 1));
    let lost: u64 = redis::cmd("HGET")
        .arg(&keys.stats)
        .arg("lost")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(lost, 1);
}

#[tokio::test]
async fn a_registered_worker_reads_back_whole_and_an_expired_one_is_pruned() {
    let server = RedisServer::start();
    let mut conn = RedisTarget::from(server.client())
        .open(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let record = WorkerRecord {
        id: "host-1-abc".into(),
        host: "host".into(),
        pid: 1,
        queues: vec!["a".into(), "b".into()],
        concurrency: 4,
        in_flight: 2,
        started: 10,
        succeeded: 7,
        failed: 1,
        busy_us: Some(5_000),
        last_beat: 1_700_000_000_000,
    };
    register(&mut conn, &record, Duration::from_secs(60), 5_000)
        .await
        .unwrap();
    assert_eq!(live_workers(&mut conn).await.unwrap(), std::slice::from_ref(&record));
    // The record expired (its worker died without deregistering): the index entry goes too.
    redis::cmd("DEL")
        .arg(crate::keys::worker_key(&record.id))
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(live_workers(&mut conn).await.unwrap().is_empty());
    let indexed: u64 = redis::cmd("ZCARD")
        .arg(crate::keys::WORKERS_KEY)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(indexed, 0);
    // Its alive members (one per queue) expire at the time given: then they read as a dead
    // worker of each queue, until forgotten.
    assert_eq!(
        expired_alive(&mut conn, 5_000).await.unwrap(),
        [("a".to_owned(), record.id.clone()), ("b".to_owned(), record.id.clone())]
    );
    assert!(expired_alive(&mut conn, 4_999).await.unwrap().is_empty());
    forget_alive(&mut conn, &[("a".to_owned(), record.id.clone())])
        .await
        .unwrap();
    assert_eq!(
        expired_alive(&mut conn, 5_000).await.unwrap(),
        [("b".to_owned(), record.id.clone())]
    );
    register(&mut conn, &record, Duration::from_secs(60), 9_000)
        .await
        .unwrap();
    deregister(&mut conn, &record.id, &record.queues).await.unwrap();
    assert!(live_workers(&mut conn).await.unwrap().is_empty());
    assert!(expired_alive(&mut conn, u64::MAX).await.unwrap().is_empty());
}

#[tokio::test]
async fn pause_flags_set_and_clear_per_queue() {
    let server = RedisServer::start();
    let mut conn = RedisTarget::from(server.client())
        .open(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let (a, b) = (
        crate::keys::QueueName::new("a").unwrap(),
        crate::keys::QueueName::new("b").unwrap(),
    );
    set_paused(&mut conn, &a, true).await.unwrap();
    assert!(is_paused(&mut conn, &a).await.unwrap());
    assert!(!is_paused(&mut conn, &b).await.unwrap());
    assert_eq!(paused_queues(&mut conn).await.unwrap(), ["a".to_owned()].into());
    set_paused(&mut conn, &a, false).await.unwrap();
    assert!(paused_queues(&mut conn).await.unwrap().is_empty());
}

#[tokio::test]
async fn samples_are_kept_per_worker_on_any_connection() {
    let server = shared_server();
    // The CLI's plain multiplexed connection, not the engine's RedisConnection.
    let mut conn = server.client().get_multiplexed_async_connection().await.unwrap();
    ping(&mut conn).await.unwrap();
    let q = crate::keys::QueueName::new(&unique_name("demo-q")).unwrap();
    save_sample(&mut conn, &q, "w1", "old").await.unwrap();
    save_sample(&mut conn, &q, "w1", "[[1,2]]").await.unwrap();
    save_sample(&mut conn, &q, "w2", "[[3,4]]").await.unwrap();
    let mut got = samples(&mut conn, &q).await.unwrap();
    got.sort();
    assert_eq!(got, ["[[1,2]]", "[[3,4]]"], "one blob per worker, the latest");
    delete_samples(&mut conn, &q).await.unwrap();
    assert!(samples(&mut conn, &q).await.unwrap().is_empty());
}

fn id(ms: u64, seq: u64) -> StreamId {
    StreamId { ms, seq }
}

#[test]
fn stream_ids_order_by_number_not_text() {
    let ids = ["9-9", "10-0", "5-1", "10-2"].map(|s| s.parse::<StreamId>().unwrap());
    assert_eq!(id_range(ids.into_iter()), Some((id(5, 1), id(10, 2))));
    assert_eq!(id_range([id(7, 0)].into_iter()), Some((id(7, 0), id(7, 0))));
    assert_eq!(id_range(std::iter::empty()), None);
}

#[test]
fn stream_ids_parse_and_write_back_unchanged() {
    for text in [
        "0-0",
        "9-10",
        "1700000000000-3",
        "18446744073709551615-18446744073709551615",
    ] {
        let parsed = StreamId::parse(text).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert_eq!(parsed.to_redis_args(), vec![text.as_bytes().to_vec()]);
    }
    for bad in [
        "",
        "5",
        "5-",
        "-5",
        "a-1",
        "1-b",
        "1-2-3",
        "18446744073709551616-0",
        "+1-2",
        "1-+2",
        " 1-2",
    ] {
        assert_eq!(StreamId::parse(bad), None, "{bad:?}");
    }
}

#[tokio::test]
async fn a_missing_function_library_is_loaded_on_first_use_and_nothing_is_written_twice() {
    // A server of its own: FUNCTION FLUSH spans the server.
    let server = RedisServer::start();
    let mut conn = RedisTarget::from(server.client())
        .open(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let queue = Queue::new("fn").unwrap();
    let keys = queue.shard("normal", 0);
    let envs: Vec<Envelope> = (0..5)
        .map(|_| Envelope::new("k", Bytes::from_static(b"1"), Codec::Json))
        .collect();
    let items: Vec<lifecycle::EnqueueItem<'_>> = envs
        .iter()
        .map(|env| lifecycle::EnqueueItem {
            keys: &keys,
            env,
            due_ms: 0,
            retention_ms: 60_000,
            events_maxlen: 100,
            unique: None,
        })
        .collect();
    // Nothing loaded: the pipelined enqueue loads the library and resends what was refused.
    assert_eq!(lifecycle::enqueue(&mut conn, &items, 1).await.unwrap(), vec![None; 5]);
    let len: u64 = redis::cmd("XLEN")
        .arg(&keys.stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 5);
    let loaded: String = functions::fcall("version", &[]).query_async(&mut conn).await.unwrap();
    assert_eq!(loaded, functions::revision());
    // Loaded and current: ensure does nothing; another revision (or none) is replaced.
    assert!(!functions::ensure(&mut conn).await.unwrap());
    redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(functions::ensure(&mut conn).await.unwrap());
    redis::cmd("FUNCTION")
        .arg("LOAD")
        .arg("REPLACE")
        .arg("#!lua name=rivulet_v1\nredis.register_function{function_name='rivulet_v1_version', callback=function() return 'old' end}")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    assert!(functions::ensure(&mut conn).await.unwrap());
    // A single call (cancel) after a flush loads it too.
    redis::cmd("FUNCTION")
        .arg("FLUSH")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let id = envs[0].id.as_str();
    let (outcome, _) = lifecycle::cancel(&mut conn, &keys, id, None, 100, 2).await.unwrap();
    assert_eq!(outcome, "cancelled");
    let len: u64 = redis::cmd("XLEN")
        .arg(&keys.stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 4, "the cancel ran once");
}

#[tokio::test]
async fn a_workers_limit_settings_are_published_where_the_limits_keys_live() {
    use crate::limits::Limit;
    let server = shared_server();
    let mut conn = RedisTarget::from(server.client())
        .open(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let name = unique_name("lim");
    let both = Limit {
        rate: Some("10/s,burst=20".parse().unwrap()),
        max_running: Some(2),
    };
    limits::register_limits(&mut conn, [(name.as_str(), &both)])
        .await
        .unwrap();
    assert!(limits::limit_names(&mut conn).await.unwrap().contains(&name));
    // Nothing has started under it: the settings show all the same, from Redis alone.
    let s = limits::limit_status(&mut conn, &name, 1).await.unwrap();
    assert_eq!((s.rate, s.max_running, s.granted), (both.rate, Some(2), 0), "{s:?}");
    let all = limits::limit_statuses(&mut conn, 1).await.unwrap();
    assert!(all.contains(&s), "{all:?}");
    // A worker started later with only a cap: the rate it does not have is no longer shown.
    let cap_only = Limit {
        rate: None,
        max_running: Some(3),
    };
    limits::register_limits(&mut conn, [(name.as_str(), &cap_only)])
        .await
        .unwrap();
    let s = limits::limit_status(&mut conn, &name, 1).await.unwrap();
    assert_eq!((s.rate, s.max_running), (None, Some(3)), "{s:?}");
    let h: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(crate::keys::LimitKeys::new(&name).state)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(h.get("cap").map(String::as_str), Some("3"), "{h:?}");
    assert!(!h.contains_key("rate"), "{h:?}");
}

/// `n` entries on a queue of their own, all read by consumer `a`.
async fn read_by_a(conn: &mut RedisConnection, name: &str, n: usize) -> (ShardKeys, Vec<StreamId>) {
    let keys = Queue::new(&unique_name(name)).unwrap().shard("normal", 0);
    ensure_group(conn, &keys.stream).await.unwrap();
    let envs: Vec<Envelope> = (0..n)
        .map(|_| Envelope::new("k", Bytes::from_static(b"1"), Codec::Json))
        .collect();
    let batch: Vec<(&ShardKeys, &Envelope)> = envs.iter().map(|e| (&keys, e)).collect();
    add_ready(conn, &batch, Durability::Fast).await.unwrap();
    let got = read_group(conn, "a", n, None, &[keys.stream.as_str()]).await.unwrap();
    let ids: Vec<StreamId> = got.into_iter().map(|(_, e)| e.id).collect();
    assert_eq!(ids.len(), n);
    (keys, ids)
}

#[tokio::test]
async fn a_reclaim_skips_live_entries_to_the_first_past_its_lease_in_one_call() {
    let server = shared_server();
    let mut conn = RedisTarget::from(server.client())
        .open(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let (keys, ids) = read_by_a(&mut conn, "skip", 30).await;
    let args = |count| ReclaimArgs {
        lease: Duration::from_secs(30),
        count,
        ..reclaim_args(&keys, "fresh")
    };
    // Every entry within its lease: the sweep ends in one call, however long the PEL.
    let got = reclaim(&mut conn, args(1)).await.unwrap();
    assert!(got.entries.is_empty());
    assert_eq!(got.next, SCAN_START, "a sweep with no orphan ends at once");
    // Entries 20..30 idle for a minute (their worker died); the 20 before them are live. One
    // call with one free slot takes the first orphan (XAUTOCLAIM alone would have spent its
    // ten attempts on live entries and taken none).
    let mut idle = redis::cmd("XCLAIM");
    idle.arg(&keys.stream).arg(crate::keys::GROUP).arg("a").arg(0);
    for id in &ids[20..] {
        idle.arg(id.to_string());
    }
    idle.arg("IDLE").arg(60_000).arg("JUSTID");
    let _: Vec<String> = idle.query_async(&mut conn).await.unwrap();
    let got = reclaim(&mut conn, args(1)).await.unwrap();
    assert_eq!(got.entries.iter().map(|e| e.id).collect::<Vec<_>>(), [ids[20]]);
    // The sweep goes on from its cursor and takes the other nine, then ends.
    let mut taken = vec![ids[20]];
    let mut cursor = got.next;
    while cursor != SCAN_START {
        let got = reclaim(&mut conn, ReclaimArgs { cursor, ..args(4) }).await.unwrap();
        taken.extend(got.entries.iter().map(|e| e.id));
        cursor = got.next;
    }
    assert_eq!(taken, ids[20..]);
    assert_eq!(owned_ids(&mut conn, &keys, "a", 100).await.unwrap(), ids[..20]);
}

#[tokio::test]
async fn a_large_settle_trims_below_the_oldest_pending_entry_and_deletes_only_settled_ones() {
    let server = shared_server();
    let mut conn = RedisTarget::from(server.client())
        .open(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let (keys, ids) = read_by_a(&mut conn, "trim-large", 8).await;
    // b reads six more, and one more stays undelivered.
    let envs: Vec<Envelope> = (0..7)
        .map(|_| Envelope::new("k", Bytes::from_static(b"1"), Codec::Json))
        .collect();
    let batch: Vec<(&ShardKeys, &Envelope)> = envs.iter().map(|e| (&keys, e)).collect();
    add_ready(&mut conn, &batch, Durability::Fast).await.unwrap();
    let b: Vec<StreamId> = read_group(&mut conn, "b", 6, None, &[keys.stream.as_str()])
        .await
        .unwrap()
        .into_iter()
        .map(|(_, e)| e.id)
        .collect();
    let ctx = |consumer| SettleCtx {
        keys: &keys,
        consumer,
        dlq_maxlen: 100,
        now_ms: 1,
    };
    async fn left(conn: &mut RedisConnection, stream: &str) -> Vec<StreamId> {
        let rows = range(conn, stream, RangeStart::First, 100).await.unwrap();
        rows.into_iter().map(|e| e.id).collect()
    }
    let acks =
        |ids: &[StreamId]| -> Vec<(StreamId, &'static Settle)> { ids.iter().map(|id| (*id, &Settle::Ack)).collect() };
    // Batches above SMALL_BATCH in settle.lua: XTRIM MINID below the oldest pending entry,
    // XDEL of the settled ones above it. b settles its six while a's eight, older, are
    // pending: those stay, b's go.
    assert!(settle(&mut conn, ctx("b"), &acks(&b)).await.unwrap().is_empty());
    let now = left(&mut conn, &keys.stream).await;
    assert_eq!(now[..8], ids[..]);
    assert_eq!(now.len(), 9, "a's eight and the undelivered entry stay");
    // a settles its six oldest: they are trimmed, its two newer ones stay pending.
    assert!(settle(&mut conn, ctx("a"), &acks(&ids[..6])).await.unwrap().is_empty());
    let now = left(&mut conn, &keys.stream).await;
    assert_eq!(now[..2], ids[6..]);
    assert_eq!(now.len(), 3);
    // A small batch (two owned, three stale): XDEL alone.
    let mut last = acks(&ids[6..]);
    last.extend(acks(&ids[..3]));
    assert_eq!(settle(&mut conn, ctx("a"), &last).await.unwrap(), ids[..3]);
    assert_eq!(
        left(&mut conn, &keys.stream).await.len(),
        1,
        "only the undelivered entry is left"
    );
    assert_eq!(
        read_group(&mut conn, "a", 10, None, &[keys.stream.as_str()])
            .await
            .unwrap()
            .len(),
        1
    );
}

/// A connection to the binary's shared server and the normal shard of a new queue, its group
/// created.
async fn queue_of_its_own(prefix: &str) -> (RedisConnection, ShardKeys) {
    let mut conn = RedisTarget::from(shared_server().client())
        .open(Some(Duration::from_secs(5)))
        .await
        .unwrap();
    let keys = Queue::new(&unique_name(prefix)).unwrap().shard("normal", 0);
    ensure_group(&mut conn, &keys.stream).await.unwrap();
    (conn, keys)
}

/// A task's first entry is compact (one `task` field); whatever settle.lua moves out of the
/// stream (a retry, a dead letter, a requeue) is written flat, the form every reader knows,
/// and decodes to the same task.
#[tokio::test]
async fn compact_entries_move_out_of_the_stream_flat() {
    let (mut conn, keys) = queue_of_its_own("compact").await;
    let mut envs = Vec::new();
    // Binary payloads whose lengths take each MessagePack string size (str8, str16, str32).
    for n in [200usize, 3_000, 70_000] {
        let payload: Vec<u8> = (0..n).map(|i| (i % 256) as u8).collect();
        let mut env = Envelope::new("k", Bytes::from(payload), Codec::Bytes);
        env.max_attempts = Some(9);
        envs.push(env);
    }
    let batch: Vec<_> = envs.iter().map(|e| (&keys, e)).collect();
    add_ready(&mut conn, &batch, Durability::Fast).await.unwrap();
    let got = read_group(&mut conn, "c", 10, None, &[keys.stream.as_str()])
        .await
        .unwrap();
    let names: Vec<&[u8]> = got[0].1.fields.iter().map(|(k, _)| &k[..]).collect();
    assert_eq!(names, [&b"task"[..], b"max_attempts"], "a first entry is compact");
    let ids: Vec<StreamId> = got.iter().map(|(_, e)| e.id).collect();
    let ctx = SettleCtx {
        keys: &keys,
        consumer: "c",
        dlq_maxlen: 100,
        now_ms: 1,
    };
    let retry = Settle::Retry {
        due_ms: 5,
        attempt: 1,
        error: "x".into(),
    };
    let bury = Settle::Bury {
        reason: DeadReason::Fatal,
        error: "y".into(),
        attempt: Some(2),
    };
    let stale = settle(
        &mut conn,
        ctx,
        &[(ids[0], &retry), (ids[1], &bury), (ids[2], &Settle::Requeue)],
    )
    .await
    .unwrap();
    assert!(stale.is_empty());
    let flat = |fields: &[(Bytes, Bytes)]| {
        assert!(fields.iter().all(|(k, _)| &k[..] != b"task"), "{fields:?}");
        Envelope::from_fields(fields.iter().cloned()).unwrap()
    };
    // The retry member: a MessagePack array of flat fields.
    let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
        .arg(&keys.retry)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    let m = &members[0];
    let (count, mut at) = crate::msgpack::array(m).unwrap();
    let strings: Vec<Bytes> = (0..count)
        .map(|_| Bytes::copy_from_slice(crate::msgpack::string(m, &mut at).unwrap()))
        .collect();
    let pairs: Vec<(Bytes, Bytes)> = strings.chunks(2).map(|p| (p[0].clone(), p[1].clone())).collect();
    let retried = flat(&pairs);
    assert_eq!(
        (retried.id.clone(), retried.attempt, retried.max_attempts),
        (envs[0].id.clone(), 1, Some(9))
    );
    assert_eq!(retried.payload, envs[0].payload);
    // The dead letter and the requeued entry, payload bytes intact.
    let dead = range(&mut conn, &keys.dlq, RangeStart::First, 10).await.unwrap();
    let buried = flat(&dead[0].fields);
    assert_eq!(
        (buried.id.clone(), buried.payload.clone(), buried.attempt),
        (envs[1].id.clone(), envs[1].payload.clone(), 2)
    );
    let left = range(&mut conn, &keys.stream, RangeStart::First, 10).await.unwrap();
    assert_eq!(left.len(), 1);
    let requeued = flat(&left[0].fields);
    assert_eq!(requeued, envs[2]);
}

/// A tracked ready task goes through `enqueue.lua` compact: one `task` field in the stream, the
/// record's kind read out of it; a delayed one waits flat in the scheduled set; a `task` that is
/// not the documented array is refused with the reason, nothing written.
#[tokio::test]
async fn tracked_enqueues_are_compact_when_ready_and_a_bad_task_field_is_refused() {
    let (mut conn, keys) = queue_of_its_own("compact-tracked").await;
    let (ready, later) = (
        Envelope::new("resize", Bytes::from_static(b"{}"), Codec::Json),
        Envelope::new("resize", Bytes::from_static(b"{}"), Codec::Json),
    );
    let item = |env, due_ms| lifecycle::EnqueueItem {
        keys: &keys,
        env,
        due_ms,
        retention_ms: 60_000,
        events_maxlen: 100,
        unique: None,
    };
    let now = 1_000;
    let out = lifecycle::enqueue(&mut conn, &[item(&ready, 0), item(&later, u64::MAX / 2)], now)
        .await
        .unwrap();
    assert_eq!(out, [None, None]);
    let entries = range(&mut conn, &keys.stream, RangeStart::First, 10).await.unwrap();
    let names: Vec<&[u8]> = entries[0].fields.iter().map(|(k, _)| &k[..]).collect();
    assert_eq!(names, [&b"task"[..]]);
    assert_eq!(Envelope::from_fields(entries[0].fields.iter().cloned()).unwrap(), ready);
    let kind: String = redis::cmd("HGET")
        .arg(keys.task(ready.id.as_str()))
        .arg("kind")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(kind, "resize");
    let members: Vec<Vec<u8>> = redis::cmd("ZRANGE")
        .arg(&keys.scheduled)
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(lifecycle::member_id(&members[0]).as_deref(), Some(later.id.as_str()));
    assert!(
        !members[0].windows(4).any(|w| w == b"task"),
        "a delayed task waits flat"
    );
    // By hand, as another language could call it: a `task` of four strings.
    let record = keys.task("bad");
    let err = functions::fcall(
        "enqueue",
        &[
            keys.stream.as_str(),
            &keys.scheduled,
            &keys.stats,
            &record,
            &keys.events,
            &keys.stream,
        ],
    )
    .arg("bad")
    .arg(now)
    .arg(0)
    .arg(60_000)
    .arg(100)
    .arg("")
    .arg("task")
    .arg(&b"\x94\xa1i\xa1k\xa4json\xa11"[..])
    .query_async::<redis::Value>(&mut conn)
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("not a MessagePack array of 5 strings"),
        "{err}"
    );
    let len: u64 = redis::cmd("XLEN")
        .arg(&keys.stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(len, 1, "nothing written for the refused call");
}
