//! The fetchers' and the acker's connections ([`DedicatedConnection`]): on one node reached
//! over TCP or a Unix socket, a link of its own that sends `XREADGROUP` and decodes the reply
//! straight into [`StreamEntry`]s, or sends the acker's plain acks and counts their statuses
//! in place ([`DedicatedConnection::ack_fresh`]); on a Cluster, behind Sentinel or over TLS, a
//! redis-rs connection like every other.
//!
//! **Why a reader of its own.** Draining, about two fifths of a worker's CPU went to redis-rs
//! decoding the reads' replies: its parser builds a `Value` tree (an allocation for each field
//! name, each value and each list), which `entries` then takes apart again
//! (docs/benchmarks.md, "What limits the drain"). Here a reply is first scanned for its end
//! (resumably, so a large reply arriving in pieces is not rescanned), then decoded in one pass
//! from the read buffer: each entry is copied once into a buffer of its own, and its field
//! names and values are slices of that copy. A small entry's copy shares a chunk of a few
//! kilobytes with its neighbours (`Arena`), so it costs one allocation, the list of its fields,
//! however many fields it has; a task that runs for an hour keeps at most that chunk alive
//! besides itself, never a whole reply. A large entry gets a buffer of its own.
//!
//! **What it keeps of a redis-rs connection.** The same address, user, password and database
//! (from the URL, parsed once by redis-rs), RESP2 (the server's default; no `HELLO`), a 5 s
//! connect timeout and the same response timeout (longer than any `BLOCK`). Commands are built
//! as `redis::Cmd`s, `XREADGROUP`'s by the same function as on the redis-rs path
//! (`stream::read_group_cmd`), and packed by redis-rs. A link that fails
//! (an I/O error, a timeout, a reply that does not parse) is dropped, and the next call
//! connects again: a reply that comes late can never be taken for the next call's. A server's
//! error reply (`NOGROUP`, `NOPERM`) is a [`redis::RedisError`] with the server's code, as
//! redis-rs would give it, and leaves the link up. The fetcher's retry with backoff, its
//! `CLIENT ID` and the lost-reply bookkeeping are the same on both kinds.

use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::settle::{self, AckCommand};
use super::target::RedisConnection;
use super::{StreamEntry, StreamId, stream};
use crate::error::{Error, Result};
use crate::keys::ShardKeys;

/// A fetcher's (or the acker's) connection: the engine's own link on one node over TCP or a
/// Unix socket, a redis-rs connection otherwise (see the module docs).
pub struct DedicatedConnection {
    inner: Inner,
}

enum Inner {
    Raw(Box<RawReader>),
    Shared(RedisConnection),
}

impl std::fmt::Debug for DedicatedConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.inner {
            Inner::Raw(_) => "DedicatedConnection::Raw",
            Inner::Shared(_) => "DedicatedConnection::Shared",
        })
    }
}

impl From<RedisConnection> for DedicatedConnection {
    fn from(conn: RedisConnection) -> Self {
        DedicatedConnection {
            inner: Inner::Shared(conn),
        }
    }
}

impl DedicatedConnection {
    /// The engine's own reader for `info`'s node, when it can reach it (plain TCP or a Unix
    /// socket); `None` for TLS, which takes a redis-rs connection. Connects lazily, at the
    /// first call.
    pub(crate) fn raw(info: &redis::ConnectionInfo, response_timeout: Duration) -> Option<Self> {
        let addr = match info.addr() {
            redis::ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
            redis::ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
            _ => return None,
        };
        let s = info.redis_settings();
        Some(DedicatedConnection {
            inner: Inner::Raw(Box::new(RawReader {
                addr,
                username: s.username().map(str::to_owned),
                password: s.password().map(str::to_owned),
                db: s.db(),
                response_timeout,
                io: None,
            })),
        })
    }

    /// Connects now (the engine's own reader connects lazily otherwise), so that a wrong
    /// address or password fails the worker's start as a redis-rs connection would.
    pub(crate) async fn connect(&mut self) -> Result<()> {
        if let Inner::Raw(raw) = &mut self.inner
            && raw.io.is_none()
        {
            raw.io = Some(raw.connect().await?);
        }
        Ok(())
    }

    /// Whether this is the engine's own reader (not a redis-rs connection).
    #[cfg(test)]
    pub fn is_raw(&self) -> bool {
        matches!(self.inner, Inner::Raw(_))
    }

    /// `XREADGROUP ... COUNT count [BLOCK ms] STREAMS keys... > ...`, as
    /// [`stream::read_group`]: (index into `streams`, entry) pairs; nothing when the block
    /// timed out.
    pub async fn read_group(
        &mut self,
        consumer: &str,
        count: usize,
        block: Option<Duration>,
        streams: &[&str],
    ) -> Result<Vec<(usize, StreamEntry)>> {
        let raw = match &mut self.inner {
            Inner::Shared(conn) => return stream::read_group(conn, consumer, count, block, streams).await,
            Inner::Raw(raw) => raw,
        };
        let cmd = stream::read_group_cmd(consumer, count, block, streams);
        raw.call(&cmd, |frame, arena| decode_read(frame, streams, arena)).await
    }

    /// `CLIENT ID` of this connection (of its link to the node serving `stream`), for
    /// [`stream::unblock_client`].
    pub async fn client_id(&mut self, stream: &str) -> Result<i64> {
        let raw = match &mut self.inner {
            Inner::Shared(conn) => return stream::client_id(conn, stream).await,
            Inner::Raw(raw) => raw,
        };
        let v = raw
            .call(redis::cmd("CLIENT").arg("ID"), |frame, _| value(frame))
            .await?;
        redis::from_redis_value(v).map_err(|e| Error::protocol(format!("CLIENT ID: {e}")))
    }
}

impl DedicatedConnection {
    /// [`settle::ack_fresh`] for several shards (ids of one shard each; none may be empty),
    /// in one round trip: the shards' transactions side by side, then one more for the stale
    /// acks' counters when there are any. Returns each shard's stale acks, in order, or the
    /// first error (the other shards' transactions may have been applied: a batch retried
    /// after one is idempotent, its second acks counted as stale, as on the redis-rs path).
    ///
    /// On the engine's own link the replies are read without redis-rs: `XACKDEL` answers a
    /// status per id, and redis-rs's parser built a `Value` for each, 7 % of a draining
    /// worker's instructions (docs/benchmarks.md). On a redis-rs connection the shards'
    /// transactions go out side by side through [`settle::ack_fresh`].
    pub(crate) async fn ack_fresh(
        &mut self,
        shards: &[(&ShardKeys, &[StreamId])],
        how: AckCommand,
    ) -> Result<Vec<u64>> {
        debug_assert!(shards.iter().all(|(_, ids)| !ids.is_empty()));
        let raw = match &mut self.inner {
            Inner::Shared(conn) => {
                let calls = shards.iter().map(|(keys, ids)| {
                    let mut conn = conn.clone();
                    async move { settle::ack_fresh(&mut conn, keys, ids, how).await }
                });
                return futures_util::future::join_all(calls).await.into_iter().collect();
            }
            Inner::Raw(raw) => raw,
        };
        if shards.is_empty() {
            return Ok(Vec::new());
        }
        // Each shard's transaction, packed straight into the link's buffer.
        let pack = |out: &mut Vec<u8>| {
            for (keys, ids) in shards {
                settle::pack_ack_fresh(out, keys, ids, how);
            }
        };
        // MULTI, each command's QUEUED, and EXEC's array: the replies to each transaction.
        let commands = vec![how.commands(); shards.len()];
        let replies = shards.len() * (how.commands() + 2);
        let acked = raw
            .call_with(pack, replies, |frame, _| decode_acks(frame, &commands))
            .await?;
        let stale: Vec<u64> = shards
            .iter()
            .zip(acked)
            .map(|((_, ids), acked)| (ids.len() as u64).saturating_sub(acked))
            .collect();
        let fixes: Vec<redis::Pipeline> = shards
            .iter()
            .zip(&stale)
            .filter(|(_, n)| **n > 0)
            .map(|((keys, _), n)| settle::stale_acks_pipe(keys, *n))
            .collect();
        if !fixes.is_empty() {
            let replies = fixes.iter().map(redis::Pipeline::len).sum();
            raw.call_with(
                |out| {
                    fixes
                        .iter()
                        .for_each(|p| out.extend_from_slice(&p.get_packed_pipeline()))
                },
                replies,
                |frame, _| {
                    let mut c = Cursor { buf: frame, pos: 0 };
                    for _ in 0..replies {
                        c.simple()?;
                    }
                    Ok(())
                },
            )
            .await?;
        }
        Ok(stale)
    }
}

/// The replies to [`settle::pack_ack_fresh`]'s transactions, of `commands` commands each: how
/// many ids each acknowledged (`XACKDEL`'s statuses 1 and 2, or `XACK`'s count). A server
/// error anywhere (a command refused when queued, one failing in `EXEC`) is returned as
/// redis-rs would give it, the first one first.
fn decode_acks(frame: &[u8], commands: &[usize]) -> Result<Vec<u64>> {
    let mut c = Cursor { buf: frame, pos: 0 };
    let mut acked = Vec::with_capacity(commands.len());
    let mut failed = None;
    for &len in commands {
        // MULTI's OK, then QUEUED or the refusal of each command.
        for _ in 0..=len {
            if let Err(e) = c.simple() {
                failed.get_or_insert(e);
            }
        }
        let start = c.pos;
        let (kind, n) = c.line()?;
        match kind {
            b'*' if number(n)? == len as i64 => {}
            b'-' => {
                failed.get_or_insert(
                    value(&frame[start..c.pos])
                        .err()
                        .unwrap_or_else(|| Error::protocol("error reply")),
                );
                continue;
            }
            _ => return Err(Error::protocol("EXEC reply is not one reply per command")),
        }
        // The first command's reply: XACKDEL's statuses or XACK's count.
        let start = c.pos;
        let n = match c.line()? {
            (b'*', len) => {
                let mut n = 0;
                for _ in 0..number(len)? {
                    if matches!(c.simple()?, 1 | 2) {
                        n += 1;
                    }
                }
                n
            }
            (b':', n) => u64::try_from(number(n)?).map_err(|_| Error::protocol("negative XACK count"))?,
            (b'-', _) => {
                failed.get_or_insert(
                    value(&frame[start..c.pos])
                        .err()
                        .unwrap_or_else(|| Error::protocol("error reply")),
                );
                0
            }
            _ => return Err(Error::protocol("unexpected XACKDEL / XACK reply")),
        };
        for _ in 1..len {
            if let Err(e) = c.simple() {
                failed.get_or_insert(e);
            }
        }
        acked.push(n);
    }
    if c.pos != frame.len() {
        return Err(Error::protocol("acks' replies longer than their contents"));
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(acked),
    }
}

enum Addr {
    Tcp(String, u16),
    Unix(PathBuf),
}

trait Duplex: AsyncRead + AsyncWrite + Send + Sync + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin> Duplex for T {}

struct RawReader {
    addr: Addr,
    username: Option<String>,
    password: Option<String>,
    db: i64,
    response_timeout: Duration,
    /// The link, once connected; dropped on any failure.
    io: Option<Io>,
}

struct Io {
    sock: Pin<Box<dyn Duplex>>,
    /// Bytes read and not yet decoded: empty between calls (one call in flight at a time).
    buf: BytesMut,
    out: Vec<u8>,
    arena: Arena,
}

/// The copies of small entries, packed side by side into shared chunks of [`Arena::CHUNK`]
/// bytes: such an entry costs no allocation of its own (a chunk's two, its buffer and its
/// shared header, are spread over the few dozen entries it holds). An entry over
/// [`Arena::SMALL`] gets a buffer of its own. So a task that runs for an hour keeps at most one
/// chunk alive besides itself, never a whole reply.
#[derive(Default)]
struct Arena {
    chunk: BytesMut,
}

impl Arena {
    const CHUNK: usize = 8 * 1024;
    const SMALL: usize = 1024;

    /// A shared copy of `bytes`.
    fn copy(&mut self, bytes: &[u8]) -> Bytes {
        if bytes.len() > Self::SMALL {
            return Bytes::copy_from_slice(bytes);
        }
        // `capacity` is what is left of the chunk after the copies split off it: a chunk too
        // full is left to the entries holding it, never grown (that would copy it).
        if self.chunk.capacity() < bytes.len() {
            self.chunk = BytesMut::with_capacity(Self::CHUNK);
        }
        self.chunk.extend_from_slice(bytes);
        self.chunk.split().freeze()
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

impl RawReader {
    /// Sends one command and decodes its reply with `decode`; connects first if needed. Any
    /// failure but a server's error reply drops the link. The link is out of `io` while the
    /// call is in flight, so a call dropped before its reply was read leaves no link behind
    /// whose next reply would be that late one.
    async fn call<T>(&mut self, cmd: &redis::Cmd, decode: impl FnOnce(&[u8], &mut Arena) -> Result<T>) -> Result<T> {
        self.call_with(|out| cmd.write_packed_command(out), 1, decode).await
    }

    /// [`call`](Self::call) for what `pack` writes, which `replies` replies answer: `decode`
    /// gets them side by side.
    async fn call_with<T>(
        &mut self,
        pack: impl FnOnce(&mut Vec<u8>),
        replies: usize,
        decode: impl FnOnce(&[u8], &mut Arena) -> Result<T>,
    ) -> Result<T> {
        let mut io = match self.io.take() {
            Some(io) => io,
            None => self.connect().await?,
        };
        let end = match tokio::time::timeout(self.response_timeout, io.request(pack, replies)).await {
            Ok(end) => end?,
            Err(_) => {
                return Err(io_error(
                    std::io::ErrorKind::TimedOut,
                    "no reply within the response timeout",
                ));
            }
        };
        let decoded = decode(&io.buf[..end], &mut io.arena);
        consume(&mut io.buf, end);
        // A server's error reply leaves the link up; a reply that was whole but not what was
        // asked for does not.
        if decoded.is_ok() || matches!(decoded, Err(Error::Redis(_))) {
            self.io = Some(io);
        }
        decoded
    }

    async fn connect(&self) -> Result<Io> {
        let sock: Pin<Box<dyn Duplex>> = match &self.addr {
            Addr::Tcp(host, port) => {
                let s = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((host.as_str(), *port)))
                    .await
                    .map_err(|_| io_error(std::io::ErrorKind::TimedOut, "connect timed out"))?
                    .map_err(redis::RedisError::from)?;
                s.set_nodelay(true).map_err(redis::RedisError::from)?;
                Box::pin(s)
            }
            Addr::Unix(path) => {
                let s = tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::UnixStream::connect(path))
                    .await
                    .map_err(|_| io_error(std::io::ErrorKind::TimedOut, "connect timed out"))?
                    .map_err(redis::RedisError::from)?;
                Box::pin(s)
            }
        };
        let mut io = Io {
            sock,
            buf: BytesMut::with_capacity(64 * 1024),
            out: Vec::with_capacity(256),
            arena: Arena::default(),
        };
        let setup = async {
            if let Some(password) = &self.password {
                let mut auth = redis::cmd("AUTH");
                auth.arg(self.username.as_deref()).arg(password);
                io.expect_ok(&auth).await?;
            }
            if self.db != 0 {
                io.expect_ok(redis::cmd("SELECT").arg(self.db)).await?;
            }
            Ok::<_, Error>(())
        };
        tokio::time::timeout(CONNECT_TIMEOUT, setup)
            .await
            .map_err(|_| io_error(std::io::ErrorKind::TimedOut, "AUTH/SELECT timed out"))??;
        Ok(io)
    }
}

impl Io {
    /// Writes what `pack` packs and reads until its `replies` replies are whole; returns their
    /// length (the replies are `buf[..len]`).
    async fn request(&mut self, pack: impl FnOnce(&mut Vec<u8>), replies: usize) -> Result<usize> {
        if !self.buf.is_empty() {
            return Err(Error::protocol("bytes from the server that no command asked for"));
        }
        self.out.clear();
        pack(&mut self.out);
        self.sock.write_all(&self.out).await.map_err(redis::RedisError::from)?;
        let mut scan = Scan::default();
        let mut left = replies;
        loop {
            while let Some(end) = scan.advance(&self.buf)? {
                left -= 1;
                if left == 0 {
                    return Ok(end);
                }
                scan = Scan {
                    pos: end,
                    ..Scan::default()
                };
            }
            if self.buf.capacity() - self.buf.len() < 16 * 1024 {
                self.buf.reserve(self.buf.len().max(64 * 1024));
            }
            if self
                .sock
                .read_buf(&mut self.buf)
                .await
                .map_err(redis::RedisError::from)?
                == 0
            {
                return Err(io_error(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
        }
    }

    /// One setup command (`AUTH`, `SELECT`) that answers `+OK`.
    async fn expect_ok(&mut self, cmd: &redis::Cmd) -> Result<()> {
        let end = self.request(|out| cmd.write_packed_command(out), 1).await?;
        let v = value(&self.buf[..end]);
        consume(&mut self.buf, end);
        v.map(drop)
    }
}

/// Drops a decoded reply from the read buffer, keeping its allocation for the next one.
fn consume(buf: &mut BytesMut, end: usize) {
    if end == buf.len() {
        buf.clear();
    } else {
        bytes::Buf::advance(buf, end);
    }
}

fn io_error(kind: std::io::ErrorKind, what: &'static str) -> Error {
    Error::Redis(std::io::Error::new(kind, what).into())
}

/// A whole small reply through redis-rs's parser, a server error as its `RedisError`.
fn value(frame: &[u8]) -> Result<redis::Value> {
    Ok(redis::parse_redis_value(frame)?.extract_error()?)
}

/// Finds where one RESP2 reply ends, resumably: a reply arriving in pieces is scanned once.
#[derive(Default)]
struct Scan {
    /// Where the next element starts.
    pos: usize,
    /// Elements still to come in each array being scanned, innermost last.
    open: Vec<i64>,
}

impl Scan {
    /// The reply's length once `buf` holds all of it; `None` while more is to come.
    fn advance(&mut self, buf: &[u8]) -> Result<Option<usize>> {
        loop {
            let Some(nl) = buf[self.pos..].iter().position(|&b| b == b'\n') else {
                return Ok(None);
            };
            let line = &buf[self.pos..self.pos + nl];
            let Some((&kind, rest)) = line.strip_suffix(b"\r").and_then(<[u8]>::split_first) else {
                return Err(Error::protocol("malformed reply line"));
            };
            let next = self.pos + nl + 1;
            match kind {
                b'+' | b'-' | b':' => self.pos = next,
                b'$' => {
                    let len = number(rest)?;
                    if len >= 0 {
                        let end = next + len as usize + 2;
                        if buf.len() < end {
                            return Ok(None);
                        }
                        if &buf[end - 2..end] != b"\r\n" {
                            return Err(Error::protocol("bulk string without its CRLF"));
                        }
                        self.pos = end;
                    } else {
                        self.pos = next;
                    }
                }
                b'*' => {
                    self.pos = next;
                    let n = number(rest)?;
                    if n > 0 {
                        self.open.push(n);
                        continue;
                    }
                }
                other => return Err(Error::protocol(format!("unexpected reply type {:?}", other as char))),
            }
            // One element done: it may close the arrays it ends.
            loop {
                match self.open.last_mut() {
                    None => return Ok(Some(self.pos)),
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        self.open.pop();
                    }
                }
            }
        }
    }
}

/// A reply's length or integer (`-1`, `0`, `1024`): an optional minus, then digits only (two
/// of these an entry field: `str::parse` was measurable).
fn number(line: &[u8]) -> Result<i64> {
    let (negative, digits) = match line.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, line),
    };
    let n = crate::ascii::decimal(digits)
        .and_then(|n| i64::try_from(n).ok())
        .ok_or_else(|| Error::protocol("malformed length in reply"))?;
    Ok(if negative { -n } else { n })
}

/// Reads a whole reply, already scanned (so every length is in bounds).
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn line(&mut self) -> Result<(u8, &'a [u8])> {
        let nl = self.buf[self.pos..]
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| Error::protocol("truncated reply"))?;
        let line = &self.buf[self.pos..self.pos + nl];
        self.pos += nl + 1;
        line.strip_suffix(b"\r")
            .and_then(<[u8]>::split_first)
            .map(|(k, rest)| (*k, rest))
            .ok_or_else(|| Error::protocol("malformed reply line"))
    }

    /// A status or an integer reply (`+OK`, `+QUEUED`, `:1`): the integer, 0 for a status; a
    /// server's error reply as its `RedisError`.
    fn simple(&mut self) -> Result<i64> {
        let start = self.pos;
        match self.line()? {
            (b'+', _) => Ok(0),
            (b':', n) => number(n),
            (b'-', _) => Err(value(&self.buf[start..self.pos])
                .err()
                .unwrap_or_else(|| Error::protocol("error reply"))),
            (k, _) => Err(Error::protocol(format!(
                "expected a status or an integer, got {:?}",
                k as char
            ))),
        }
    }

    /// An array's length; `None` for a nil array.
    fn array(&mut self) -> Result<Option<usize>> {
        match self.line()? {
            (b'*', n) => {
                let n = number(n)?;
                Ok((n >= 0).then_some(n as usize))
            }
            (k, _) => Err(Error::protocol(format!("expected an array, got {:?}", k as char))),
        }
    }

    /// A bulk string's span in `buf`.
    fn bulk(&mut self) -> Result<std::ops::Range<usize>> {
        match self.line()? {
            (b'$', n) => {
                let n = usize::try_from(number(n)?).map_err(|_| Error::protocol("nil where a string was expected"))?;
                let span = self.pos..self.pos + n;
                if span.end + 2 > self.buf.len() {
                    return Err(Error::protocol("truncated reply"));
                }
                self.pos += n + 2;
                Ok(span)
            }
            (k, _) => Err(Error::protocol(format!("expected a string, got {:?}", k as char))),
        }
    }
}

/// An `XREADGROUP` reply (RESP2: nil, or `[[stream, [[id, [field, value, ...]], ...]], ...]`)
/// as (index into `streams`, entry) pairs.
fn decode_read(frame: &[u8], streams: &[&str], arena: &mut Arena) -> Result<Vec<(usize, StreamEntry)>> {
    if frame.first() == Some(&b'-') {
        return value(frame).map(|_| Vec::new());
    }
    let mut c = Cursor { buf: frame, pos: 0 };
    let mut out = Vec::new();
    // Where each field of the entry being decoded lies, reused from entry to entry.
    let mut spans: Vec<(std::ops::Range<usize>, std::ops::Range<usize>)> = Vec::new();
    for _ in 0..c.array()?.unwrap_or(0) {
        if c.array()? != Some(2) {
            return Err(Error::protocol("stream reply item is not [key, entries]"));
        }
        let key = &frame[c.bulk()?];
        let idx = streams
            .iter()
            .position(|s| s.as_bytes() == key)
            .ok_or_else(|| Error::protocol("XREADGROUP answered for a stream not asked for"))?;
        let n = c.array()?.unwrap_or(0);
        // Never more than the reply can hold (a scanned reply has them all; this is for any other).
        out.reserve(n.min(frame.len() / 16));
        for _ in 0..n {
            if c.array()? != Some(2) {
                return Err(Error::protocol("stream entry is not [id, fields]"));
            }
            let id = StreamId::parse_bytes(&frame[c.bulk()?])?;
            // A deleted entry still in a PEL reads as nil fields.
            let pairs = c.array()?.unwrap_or(0) / 2;
            let start = c.pos;
            spans.clear();
            for _ in 0..pairs {
                spans.push((c.bulk()?, c.bulk()?));
            }
            // The entry's copy: its fields are slices of it.
            let own = arena.copy(&frame[start..c.pos]);
            let fields = spans
                .drain(..)
                .map(|(k, v)| {
                    (
                        own.slice(k.start - start..k.end - start),
                        own.slice(v.start - start..v.end - start),
                    )
                })
                .collect();
            out.push((idx, StreamEntry { id, fields }));
        }
    }
    if c.pos != frame.len() {
        return Err(Error::protocol("XREADGROUP reply longer than its contents"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_whole(reply: &[u8]) -> Option<usize> {
        Scan::default().advance(reply).unwrap()
    }

    #[test]
    fn a_reply_is_whole_only_with_its_last_byte_and_in_any_pieces() {
        let reply: &[u8] =
            b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$2\r\nid\r\n$0\r\n\r\n*2\r\n$3\r\n2-0\r\n*-1\r\n";
        assert_eq!(scan_whole(reply), Some(reply.len()));
        for cut in 0..reply.len() {
            assert_eq!(scan_whole(&reply[..cut]), None, "cut at {cut}");
            // Resumed after a piece, it finds the same end.
            let mut s = Scan::default();
            assert_eq!(s.advance(&reply[..cut]).unwrap(), None);
            assert_eq!(s.advance(reply).unwrap(), Some(reply.len()), "resumed at {cut}");
        }
        for whole in [
            &b"*-1\r\n"[..],
            b"*0\r\n",
            b"-NOGROUP no group\r\n",
            b":7\r\n",
            b"+OK\r\n",
            b"$-1\r\n",
        ] {
            assert_eq!(scan_whole(whole), Some(whole.len()));
        }
        // What follows the reply is not part of it.
        assert_eq!(scan_whole(b":1\r\n:2\r\n"), Some(4));
    }

    #[test]
    fn ack_transactions_count_acked_ids_and_give_the_first_server_error() {
        let keys = crate::keys::Queue::new("q").unwrap().shard("normal", 0);
        let ids = [
            StreamId { ms: 1, seq: 0 },
            StreamId { ms: 2, seq: 0 },
            StreamId { ms: 3, seq: 0 },
        ];
        // Packed by hand exactly as redis-rs packs the transaction `ack_fresh` sends.
        for how in [AckCommand::AckDel, AckCommand::AckThenDel] {
            let pipe = settle::ack_fresh_pipe(&keys, &ids, how, true);
            let mut packed = Vec::new();
            settle::pack_ack_fresh(&mut packed, &keys, &ids, how);
            assert_eq!(
                String::from_utf8_lossy(&packed),
                String::from_utf8_lossy(&pipe.get_packed_pipeline()),
                "{how:?}"
            );
            assert_eq!(how.commands(), pipe.len(), "{how:?}");
        }
        let (del, then) = (AckCommand::AckDel.commands(), AckCommand::AckThenDel.commands());
        // XACKDEL: 1 and 2 acked (2: deleted elsewhere), -1 not pending; XACK: a count.
        let frame = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n*3\r\n:1\r\n:-1\r\n:2\r\n:5\r\n\
                      +OK\r\n+QUEUED\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n:3\r\n:3\r\n:8\r\n";
        assert_eq!(decode_acks(frame, &[del, then]).unwrap(), [2, 3]);
        // Refused when queued (an ACL without XACKDEL): that error, not EXECABORT's.
        let frame = b"+OK\r\n-NOPERM User has no permissions to run the 'xackdel' command\r\n+QUEUED\r\n\
                      -EXECABORT Transaction discarded because of previous errors.\r\n";
        let e = decode_acks(frame, &[del]).unwrap_err();
        assert!(matches!(&e, Error::Redis(r) if r.code() == Some("NOPERM")), "{e}");
        // Failing inside EXEC.
        let frame = b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n-WRONGTYPE Operation against a key holding the wrong kind of value\r\n:1\r\n";
        let e = decode_acks(frame, &[del]).unwrap_err();
        assert!(matches!(&e, Error::Redis(r) if r.code() == Some("WRONGTYPE")), "{e}");
        // Not what the transaction answers.
        for bad in [
            &b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*3\r\n:1\r\n:1\r\n:1\r\n"[..],
            b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n$1\r\nx\r\n:1\r\n",
        ] {
            assert!(matches!(decode_acks(bad, &[del]), Err(Error::Protocol(_))));
        }
    }

    #[test]
    fn malformed_replies_are_protocol_errors() {
        for bad in [
            &b"?\r\n"[..],
            b"*x\r\n",
            b"*\r\n",
            b"*-\r\n",
            b"$1x\r\n",
            b"$9999999999999999999\r\n",
            b"$3\r\nabcd\r\n",
            b"+OK\n",
        ] {
            assert!(
                Scan::default().advance(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let streams = ["s"];
        // Another stream than the one asked for, and a string where the entries should be.
        for bad in [
            &b"*1\r\n*2\r\n$1\r\nt\r\n*0\r\n"[..],
            b"*1\r\n*2\r\n$1\r\ns\r\n$1\r\nx\r\n",
        ] {
            assert!(decode_read(bad, &streams, &mut Arena::default()).is_err());
        }
    }

    #[test]
    fn mutated_replies_never_panic() {
        let reply: &[u8] = b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n*2\r\n$3\r\n1-5\r\n*4\r\n$2\r\nid\r\n$1\r\na\r\n$7\r\npayload\r\n$3\r\n{}\n\r\n*2\r\n$3\r\n2-0\r\n*-1\r\n";
        let mut rng = fastrand::Rng::with_seed(18);
        for _ in 0..20_000 {
            let mut m = reply.to_vec();
            if rng.u8(..8) == 0 {
                // A count far beyond what follows.
                m.splice(0..2, b"*999999999999999".iter().copied());
            }
            for _ in 0..rng.usize(1..4) {
                let at = rng.usize(..m.len());
                match rng.u8(..3) {
                    0 => m[at] = rng.u8(..),
                    1 => drop(m.remove(at)),
                    _ => m.insert(at, *rng.choice(b"\r\n*$-:+0123456789".iter()).unwrap()),
                }
            }
            // Decoded as a read would be: whatever the scan takes as one whole reply.
            let _ = decode_read(&m, &["s"], &mut Arena::default());
            if let Ok(Some(end)) = Scan::default().advance(&m) {
                let _ = decode_read(&m[..end], &["s"], &mut Arena::default());
            }
        }
    }

    #[test]
    fn entries_decode_into_slices_of_their_own_copy() {
        let reply: &[u8] = b"*1\r\n*2\r\n$1\r\ns\r\n*2\r\n*2\r\n$3\r\n1-5\r\n*4\r\n$2\r\nid\r\n$1\r\na\r\n$7\r\npayload\r\n$3\r\n{}\n\r\n*2\r\n$3\r\n2-0\r\n*-1\r\n";
        let got = decode_read(reply, &["x", "s"], &mut Arena::default()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, 1);
        assert_eq!(got[0].1.id, StreamId { ms: 1, seq: 5 });
        let f: Vec<(&[u8], &[u8])> = got[0].1.fields.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        assert_eq!(f, [(&b"id"[..], &b"a"[..]), (b"payload", b"{}\n")]);
        assert!(got[1].1.fields.is_empty(), "a deleted entry has no fields");
        assert!(
            decode_read(b"*-1\r\n", &["s"], &mut Arena::default())
                .unwrap()
                .is_empty(),
            "a block that timed out"
        );
        let e = decode_read(b"-NOGROUP No such key\r\n", &["s"], &mut Arena::default()).unwrap_err();
        assert!(super::super::is_nogroup(&e), "{e}");
    }

    use crate::keys::Queue;
    use crate::testing::{RedisServer, shared_server, unique_name};

    async fn redis_rs(url: &str) -> RedisConnection {
        super::super::RedisTarget::parse(url)
            .unwrap()
            .open(Some(Duration::from_secs(5)))
            .await
            .unwrap()
    }

    async fn own(url: &str) -> DedicatedConnection {
        let conn = super::super::RedisTarget::parse(url)
            .unwrap()
            .open_dedicated(Duration::from_secs(5))
            .await
            .unwrap();
        assert!(conn.is_raw(), "a plain single-node URL gets the engine's own reader");
        conn
    }

    /// `n` entries with awkward fields (empty, binary with CRLF inside, one of 1 MiB so the
    /// reply arrives in many pieces) on a fresh stream with its group.
    async fn fill(conn: &mut RedisConnection, stream: &str, n: usize) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        super::super::ensure_group(conn, stream).await.unwrap();
        let mut all = Vec::new();
        for i in 0..n {
            let mut fields = vec![
                (b"id".to_vec(), format!("t{i}").into_bytes()),
                (b"empty".to_vec(), Vec::new()),
                (b"bin".to_vec(), vec![b'\r', b'\n', 0, 255, b'$', b'*', b'\r', b'\n']),
            ];
            if i == 1 {
                fields.push((b"big".to_vec(), (0..1 << 20).map(|j| (j % 251) as u8).collect()));
            }
            let mut cmd = redis::cmd("XADD");
            cmd.arg(stream).arg("*");
            for (k, v) in &fields {
                cmd.arg(k).arg(v);
            }
            let _: String = cmd.query_async(conn).await.unwrap();
            all.push(fields);
        }
        all
    }

    #[test]
    fn small_copies_share_chunks_and_large_ones_stand_alone() {
        let mut arena = Arena::default();
        // Sizes that end chunks at every offset, with the edges: empty, exactly SMALL, past it.
        let sizes = (0..600)
            .map(|i| (i * 37) % (Arena::SMALL + 1))
            .chain([0, Arena::SMALL, Arena::SMALL + 1, 1 << 20]);
        let wrote: Vec<Vec<u8>> = sizes
            .enumerate()
            .map(|(i, n)| (0..n).map(|j| (i * 7 + j) as u8).collect())
            .collect();
        let copies: Vec<Bytes> = wrote.iter().map(|w| arena.copy(w)).collect();
        // Every copy reads back whole after the later ones were packed beside it, and slices
        // of it (a field) are its bytes.
        for (w, c) in wrote.iter().zip(&copies) {
            assert_eq!(&c[..], &w[..]);
            if c.len() > 2 {
                assert_eq!(&c.slice(1..c.len() - 1)[..], &w[1..w.len() - 1]);
            }
        }
        // Neighbours share a chunk: consecutive small copies sit back to back in memory.
        let (a, b) = (&copies[1], &copies[2]);
        assert_eq!(
            a.as_ptr() as usize + a.len(),
            b.as_ptr() as usize,
            "packed side by side"
        );
        // A copy past SMALL is a buffer of its own, not cut out of the chunk.
        let big = &copies[copies.len() - 2];
        let before = &copies[copies.len() - 3];
        assert_ne!(before.as_ptr() as usize + before.len(), big.as_ptr() as usize);
    }

    fn plain(e: &StreamEntry) -> Vec<(Vec<u8>, Vec<u8>)> {
        e.fields.iter().map(|(k, v)| (k.to_vec(), v.to_vec())).collect()
    }

    #[tokio::test]
    async fn the_own_reader_reads_what_was_written_across_streams_and_in_pieces() {
        let server = shared_server();
        let mut conn = redis_rs(&server.url()).await;
        let q = Queue::new(&unique_name("reader")).unwrap();
        let (a, b) = (q.shard("high", 0).stream, q.shard("low", 0).stream);
        let wrote_a = fill(&mut conn, &a, 3).await;
        let wrote_b = fill(&mut conn, &b, 2).await;
        let mut fetch = own(&server.url()).await;
        let got = fetch.read_group("c1", 10, None, &[&a, &b]).await.unwrap();
        let read_a: Vec<_> = got.iter().filter(|(i, _)| *i == 0).map(|(_, e)| plain(e)).collect();
        let read_b: Vec<_> = got.iter().filter(|(i, _)| *i == 1).map(|(_, e)| plain(e)).collect();
        assert_eq!(read_a, wrote_a);
        assert_eq!(read_b, wrote_b);
        // The ids are the stream's, as redis-rs reads them.
        let ids: Vec<StreamId> = got.iter().filter(|(i, _)| *i == 0).map(|(_, e)| e.id).collect();
        let listed = stream::range(&mut conn, &a, stream::RangeStart::First, 10)
            .await
            .unwrap();
        assert_eq!(ids, listed.iter().map(|e| e.id).collect::<Vec<_>>());
        // COUNT is honoured, and a drained stream blocks, then times out with nothing.
        fill(&mut conn, &a, 3).await;
        assert_eq!(fetch.read_group("c1", 2, None, &[&a]).await.unwrap().len(), 2);
        assert_eq!(fetch.read_group("c1", 2, None, &[&a]).await.unwrap().len(), 1);
        let none = fetch
            .read_group("c1", 5, Some(Duration::from_millis(20)), &[&a, &b])
            .await
            .unwrap();
        assert!(none.is_empty());
    }

    #[tokio::test]
    async fn a_server_error_keeps_the_link_and_a_broken_link_is_made_again() {
        let server = shared_server();
        let mut conn = redis_rs(&server.url()).await;
        let stream = Queue::new(&unique_name("reader")).unwrap().shard("normal", 0).stream;
        let mut fetch = own(&server.url()).await;
        let id = fetch.client_id(&stream).await.unwrap();
        // No group yet: the server's NOGROUP, as redis-rs gives it, on the same link.
        let e = fetch.read_group("c1", 1, None, &[&stream]).await.unwrap_err();
        assert!(super::super::is_nogroup(&e), "{e}");
        assert_eq!(fetch.client_id(&stream).await.unwrap(), id);
        fill(&mut conn, &stream, 1).await;
        // The server drops the link: that call fails, the next one connects again.
        let killed: i64 = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("ID")
            .arg(id)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert_eq!(killed, 1);
        assert!(fetch.read_group("c1", 1, None, &[&stream]).await.is_err());
        let got = fetch.read_group("c1", 1, None, &[&stream]).await.unwrap();
        assert_eq!(got.len(), 1, "nothing was lost with the link");
        assert_ne!(fetch.client_id(&stream).await.unwrap(), id, "a new link");
    }

    #[tokio::test]
    async fn a_dropped_call_never_hands_its_late_reply_to_the_next() {
        let server = shared_server();
        let mut conn = redis_rs(&server.url()).await;
        let q = Queue::new(&unique_name("reader")).unwrap();
        let (empty, full) = (q.shard("high", 0).stream, q.shard("low", 0).stream);
        super::super::ensure_group(&mut conn, &empty).await.unwrap();
        fill(&mut conn, &full, 1).await;
        let mut fetch = own(&server.url()).await;
        // A blocking read given up half way: its reply (nil, after the block) is still due.
        let lanes = [empty.as_str()];
        let blocked = fetch.read_group("c1", 1, Some(Duration::from_millis(300)), &lanes);
        assert!(tokio::time::timeout(Duration::from_millis(50), blocked).await.is_err());
        let got = fetch.read_group("c1", 1, None, &[&full]).await.unwrap();
        assert_eq!(got.len(), 1, "the late nil was not taken for this read's reply");
    }

    /// Writes two entries through redis-rs at `url` and reads them back through the engine's
    /// own reader: the reader and the stream, for more.
    async fn reads_back(url: &str) -> (DedicatedConnection, String) {
        let mut conn = redis_rs(url).await;
        let stream = Queue::new("reader").unwrap().shard("normal", 0).stream;
        let wrote = fill(&mut conn, &stream, 2).await;
        let mut fetch = own(url).await;
        let got = fetch.read_group("c1", 10, None, &[&stream]).await.unwrap();
        assert_eq!(got.iter().map(|(_, e)| plain(e)).collect::<Vec<_>>(), wrote);
        (fetch, stream)
    }

    #[tokio::test]
    async fn the_own_reader_logs_in_as_the_urls_user_and_selects_its_database() {
        let mut server = RedisServer::start_with(&["--user", "fetcher", "on", ">s3cret", "~*", "&*", "+@all"]);
        let url = format!("redis://fetcher:s3cret@127.0.0.1:{}/3", server.port());
        let (mut fetch, stream) = reads_back(&url).await;
        // A wrong password fails at the start, with the server's reason and without the password.
        let bad = format!("redis://fetcher:wrong@127.0.0.1:{}/3", server.port());
        let e = super::super::RedisTarget::parse(&bad)
            .unwrap()
            .open_dedicated(Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(!e.to_string().contains("wrong"), "{e}");
        server.kill();
        assert!(
            fetch.read_group("c1", 10, None, &[&stream]).await.is_err(),
            "the server is gone"
        );
    }

    #[tokio::test]
    async fn the_own_reader_reaches_a_server_on_a_unix_socket() {
        let dir = crate::testing::TempDir::new("reader-unix");
        let sock = dir.path().join("redis.sock");
        let server = RedisServer::start_with(&["--unixsocket", sock.to_str().unwrap(), "--unixsocketperm", "700"]);
        let url = format!("redis+unix://{}", sock.display());
        reads_back(&url).await;
        drop(server);
    }
}
