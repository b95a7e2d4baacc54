//! What the dashboard's tests share: the real server started in the test's runtime on a free
//! loopback port ([`Dash`]), and a small HTTP/1.1 client on a plain TCP socket ([`request`]),
//! so the tests see exactly the bytes a browser or `curl` would.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

pub const TOKEN: &str = "test-token-0123456789";

/// A running dashboard, stopped on drop.
#[derive(Debug)]
pub struct Dash {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Dash {
    /// A dashboard on loopback (reads need no token).
    pub async fn start(redis: impl Into<rivulet::RedisTarget>) -> Self {
        Self::start_as(redis, "127.0.0.1:0".parse().unwrap()).await
    }

    /// A dashboard listening on loopback but configured as if it listened on `config_addr`
    /// (a non-loopback address makes reads need the token, without leaving loopback).
    pub async fn start_as(redis: impl Into<rivulet::RedisTarget>, config_addr: SocketAddr) -> Self {
        let redis = redis.into();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = rivulet_dashboard::Config::new(config_addr, TOKEN);
        config.refresh = Duration::from_millis(300);
        // Generous: tests look at a handful of small queues and want fresh numbers.
        config.redis_budget = 2000.0;
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            rivulet_dashboard::serve(listener, redis, config, async move {
                let _ = rx.await;
            })
            .await
            .expect("the dashboard serves until told to stop");
        });
        let dash = Dash {
            addr,
            stop: Some(tx),
            task,
        };
        assert!(
            rivulet::testing::wait_until(Duration::from_secs(10), async || dash.get("/healthz").await.status
                == 200)
            .await,
            "the dashboard did not answer /healthz"
        );
        dash
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn get(&self, path: &str) -> Resp {
        request(self.addr, "GET", path, &[], b"").await
    }

    pub async fn get_with_token(&self, path: &str) -> Resp {
        request(
            self.addr,
            "GET",
            path,
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            b"",
        )
        .await
    }

    /// A POST with the token and a JSON body.
    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        let body = serde_json::to_vec(body).unwrap();
        request(
            self.addr,
            "POST",
            path,
            &[
                ("Authorization", &format!("Bearer {TOKEN}")),
                ("Content-Type", "application/json"),
            ],
            &body,
        )
        .await
    }

    /// A POST with the token and no body.
    pub async fn post_empty(&self, path: &str) -> Resp {
        request(
            self.addr,
            "POST",
            path,
            &[("Authorization", &format!("Bearer {TOKEN}"))],
            b"",
        )
        .await
    }
}

impl Drop for Dash {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.abort();
    }
}

/// An HTTP answer.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics naming the body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("status {}: the body is not JSON ({e}): {}", self.status, self.text()))
    }

    /// Asserts the status, printing the body when it differs, and returns the JSON body.
    pub fn expect(&self, status: u16) -> Value {
        assert_eq!(self.status, status, "body: {}", self.text());
        self.json()
    }
}

/// One request on a fresh connection (`Connection: close`), read to the end.
pub async fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("the dashboard accepts connections");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // A body over the server's limit may be refused before it is all read: the write can
    // then fail, and the answer is still there to read.
    let _ = s.write_all(body).await;
    // Read until the answer is complete (Content-Length, the last chunk, or the server
    // closing): some servers (chromedriver) keep the connection open despite `close`.
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !complete(&raw) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => raw.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    parse(&raw)
}

fn complete(raw: &[u8]) -> bool {
    let Some(split) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let body = &raw[split + 4..];
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    false
}

/// Opens a request and reads what arrives for `for_at_most` (for server-sent events).
pub async fn stream_for(addr: SocketAddr, path: &str, for_at_most: Duration, until: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + for_at_most;
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(until) {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn parse(raw: &[u8]) -> Resp {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(raw)));
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Resp { status, headers, body }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = eol + 2;
        let end = (start + size).min(b.len());
        out.extend_from_slice(&b[start..end]);
        b = &b[(end + 2).min(b.len())..];
    }
    out
}
