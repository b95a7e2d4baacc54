//! The CLI's own Redis needs, each a call into `rivulet::store`: the reachability check behind
//! every command's first error message, and the demo's bookkeeping (latency samples, cleanup).
//! Everything else goes through rivulet's `Client`, `Worker` and `Inspector`; no file of the
//! CLI builds a Redis command or a key name (the engine's `broker_owns_redis` test checks it).

use std::time::Duration;

use anyhow::{Context, anyhow};
use redis::AsyncConnectionConfig;
use rivulet::{Inspector, Queue, QueueName, RedisConnection, RedisTarget, TlsOptions};

use crate::settings::redact_url;

/// How long the reachability check waits for a connection and for PONG.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Why Redis could not be used, in words a person can act on.
#[derive(Debug)]
pub enum Unreachable {
    /// The URL does not parse.
    BadUrl(String),
    /// Nothing answered (refused, timed out, unresolvable host).
    NoAnswer(String),
    /// Something answered, but refused us (authentication, protocol).
    Refused(String),
    /// Something answered, but not in Redis's protocol (an HTTP server, say).
    NotRedis(String),
}

impl Unreachable {
    /// Whether nothing answered at all (the demo may start a private server then).
    pub fn nothing_answered(&self) -> bool {
        matches!(self, Unreachable::NoAnswer(_))
    }
}

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreachable::BadUrl(m) | Unreachable::NoAnswer(m) | Unreachable::Refused(m) | Unreachable::NotRedis(m) => {
                f.write_str(m)
            }
        }
    }
}

impl std::error::Error for Unreachable {}

/// Opens `url` with `tls` and checks that Redis answers PING, within a few seconds; then opens
/// the engine's connection to it (one node, a Cluster or a master behind Sentinel). Warns once
/// when TLS verification is off. A `redis://` URL that reaches a node of a Redis Cluster is
/// refused as a bad URL, naming `redis+cluster://`.
pub async fn connect_checked(url: &str, tls: &TlsOptions) -> Result<(RedisTarget, RedisConnection), Unreachable> {
    let shown = redact_url(url);
    let target = RedisTarget::with_tls(url, tls).map_err(|e| {
        Unreachable::BadUrl(format!(
            "invalid Redis URL {shown:?} or TLS settings: {e}\nhint: URLs look like {} \
             (rediss:// for TLS, with --tls-ca-file for a private CA)",
            rivulet::URL_SHAPES
        ))
    })?;
    if tls.insecure || url.ends_with("#insecure") {
        tracing::warn!(
            redis = %shown,
            "TLS certificate verification is off (--tls-insecure): the connection is encrypted, but \
             anyone between here and Redis can pose as it"
        );
    }
    let single = !(target.is_cluster() || target.is_sentinel());
    let answer = async {
        if single && let Ok(client) = rivulet::connection::open(url, tls) {
            // One node: a plain connection answers (or fails) at once, where the engine's
            // reconnecting one would retry first.
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CHECK_TIMEOUT))
                .set_response_timeout(Some(CHECK_TIMEOUT));
            let mut conn = client.get_multiplexed_async_connection_with_config(&config).await?;
            rivulet::store::ping(&mut conn).await?;
            if rivulet::store::is_cluster_node(&mut conn).await? {
                return Ok(None);
            }
        }
        let mut conn = target.connect().await.map_err(|e| match e {
            rivulet::Error::Redis(e) => e,
            other => redis::RedisError::from((redis::ErrorKind::Io, "cannot connect", other.to_string())),
        })?;
        rivulet::store::ping(&mut conn).await?;
        Ok::<_, redis::RedisError>(Some(conn))
    };
    match tokio::time::timeout(CHECK_TIMEOUT * 2, answer).await {
        Ok(Ok(Some(conn))) => Ok((target, conn)),
        Ok(Ok(None)) => Err(Unreachable::BadUrl(format!(
            "{shown} is a node of a Redis Cluster, and a redis:// URL reaches that one node only (its \
             commands would fail with MOVED)\nhint: use a cluster URL naming one or more of its nodes: \
             --redis-url redis+cluster://HOST1:PORT1,HOST2:PORT2 (rediss+cluster:// for TLS)"
        ))),
        Ok(Err(e)) if rivulet::connection::is_certificate_error(&e) => Err(Unreachable::Refused(format!(
            "the TLS handshake with Redis at {shown} failed: {e}\nhint: the server's certificate is not \
             signed by a CA this host trusts: pass its CA with --tls-ca-file (or REDIS_TLS_CA_FILE)"
        ))),
        Ok(Err(e)) if e.is_io_error() || e.is_connection_refusal() || e.is_timeout() || e.is_connection_dropped() => {
            Err(no_answer(&shown, &e.to_string()))
        }
        // A Redis that is still loading its data (after a restart) is not there yet either.
        Ok(Err(e))
            if matches!(
                e.kind(),
                redis::ErrorKind::Server(redis::ServerErrorKind::BusyLoading | redis::ServerErrorKind::TryAgain)
            ) =>
        {
            Err(no_answer(&shown, &e.to_string()))
        }
        // A reply that does not parse as RESP (or a PING answered with something else than
        // PONG): a server of another protocol listens there, and user names and ACLs are not
        // the problem.
        // (The parser's own message, byte offsets over several lines, tells a person nothing.)
        Ok(Err(e))
            if matches!(
                e.kind(),
                redis::ErrorKind::Parse | redis::ErrorKind::UnexpectedReturnType
            ) =>
        {
            Err(Unreachable::NotRedis(format!(
                "something answers at {shown}, but it is not Redis: its reply to PING is not in Redis's \
                 protocol\nhint: check the host and port in --redis-url (or REDIS_URL); an HTTP server or \
                 another service listens there"
            )))
        }
        Ok(Err(e)) => Err(Unreachable::Refused(format!(
            "Redis at {shown} refused the connection: {e}\nhint: check the user name and password in \
             --redis-url (or REDIS_URL), and that the ACL user may run the commands Rivulet needs \
             (see docs/operations.md)"
        ))),
        Err(_) => Err(no_answer(&shown, &format!("no answer within {:?}", CHECK_TIMEOUT * 2))),
    }
}

fn no_answer(shown: &str, cause: &str) -> Unreachable {
    Unreachable::NoAnswer(format!(
        "cannot reach Redis at {shown}: {cause}\nhint: start redis-server there, or point --redis-url \
         (or REDIS_URL) at a running Redis; `redis-cli -u <url> ping` should print PONG"
    ))
}

/// The checks every worker makes at start, made once by a supervisor before it starts any:
/// otherwise each child would fail the same way and the supervisor would crash-loop.
pub async fn check_server(client: &RedisTarget, url: &str, worker: &crate::cli::WorkerArgs) -> anyhow::Result<()> {
    let inspector = Inspector::new(client).await.map_err(|e| engine_error(url, e))?;
    let info = inspector.server_info().await.map_err(|e| engine_error(url, e))?;
    if !worker.allow_eviction {
        info.check_eviction()?;
    }
    worker.durability.check(&info)?;
    Ok(())
}

/// Adds which Redis a failed engine call was talking to.
pub fn engine_error(url: &str, e: rivulet::Error) -> anyhow::Error {
    if e.is_transient() {
        anyhow!(e).context(format!("Redis at {} stopped answering", redact_url(url)))
    } else {
        anyhow!(e)
    }
}

/// The HASH of demo start-latency histograms of a queue, one field per worker process.
pub fn demo_latency_key(queue: &QueueName) -> String {
    rivulet::keys::demo_samples_key(queue)
}

/// Stores one worker's latency histogram (encoded) for the demo.
pub async fn save_latency(
    conn: &mut RedisConnection,
    queue: &QueueName,
    worker: &str,
    encoded: &str,
) -> redis::RedisResult<()> {
    rivulet::store::save_sample(conn, queue, worker, encoded).await
}

/// Every worker's latency histogram (encoded) for the demo queue.
pub async fn load_latency(conn: &mut RedisConnection, queue: &QueueName) -> anyhow::Result<Vec<String>> {
    rivulet::store::samples(conn, queue)
        .await
        .context("reading the demo's latency samples")
}

/// Deletes the demo's throwaway queue (everything [`Inspector::delete_queue`] removes) and its
/// latency samples.
pub async fn delete_demo_queue(inspector: &Inspector, conn: &mut RedisConnection, queue: &Queue) -> anyhow::Result<()> {
    inspector
        .delete_queue(queue, true)
        .await
        .with_context(|| format!("deleting queue {}", queue.name()))?;
    rivulet::store::delete_samples(conn, queue.name())
        .await
        .with_context(|| format!("deleting the latency samples of queue {}", queue.name()))
}
