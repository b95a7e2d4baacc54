//! `worker-cli dashboard`: the token rule at start (beyond loopback without a token is bad
//! usage, exit 2, before Redis is touched), a served dashboard with a printed token that
//! guards changes, and a clean stop on SIGTERM. The API itself is tested in
//! `dashboard/tests/`.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use rivulet::testing::{ChildGuard, Fixture, wait_until};

use crate::common::{BIN, cli, cli_fails};

/// A request on a fresh connection; (status, body).
fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("the dashboard accepts connections");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).unwrap();
    let status = raw.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (
        status,
        raw.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
}

#[tokio::test]
async fn dashboard_refuses_a_wide_bind_without_a_token_and_serves_with_a_printed_one() {
    let f = Fixture::start().await;
    // Refused at start, naming the fix; Redis is not even needed for that.
    for args in [
        &["dashboard", "--addr", "0.0.0.0:0"][..],
        &["dashboard", "--addr", "[::]:0"],
    ] {
        let stderr = cli_fails(&f.server, args, 2).await;
        assert!(
            stderr.contains("without a token") && stderr.contains("--token"),
            "{stderr}"
        );
    }
    let stderr = cli_fails(&f.server, &["dashboard", "--token", "short"], 2).await;
    assert!(stderr.contains("at least 8"), "{stderr}");
    let stderr = cli_fails(&f.server, &["dashboard", "--addr", "localhost"], 2).await;
    assert!(stderr.contains("--addr"), "{stderr}");

    // Served on loopback with a made-up token, printed once on stderr.
    assert!(
        cli(&f.server, &["enqueue", "--queue", "dash", "--kind", "noop"])
            .await
            .status
            .success()
    );
    let mut child = ChildGuard::spawn(
        "worker-cli dashboard",
        Command::new(BIN)
            .args(["dashboard", "--addr", "127.0.0.1:0"])
            .env("REDIS_URL", f.server.url())
            .env_remove("RIVULET_DASHBOARD_TOKEN"),
    );
    assert!(
        wait_until(Duration::from_secs(20), async || child
            .log()
            .contains("dashboard token"))
        .await,
        "no token printed: {}",
        child.log()
    );
    let log = child.log();
    let addr = log
        .lines()
        .find_map(|l| l.strip_prefix("dashboard: http://"))
        .map(|a| a.trim_end_matches('/').to_owned())
        .unwrap_or_else(|| panic!("no address in {log}"));
    let token = log
        .lines()
        .find_map(|l| {
            l.rsplit_once(": ")
                .filter(|_| l.starts_with("dashboard token"))
                .map(|(_, t)| t.trim().to_owned())
        })
        .unwrap();
    assert_eq!(token.len(), 32, "{log}");
    assert_eq!(http(&addr, "GET", "/healthz", None).0, 200);
    assert_eq!(http(&addr, "GET", "/readyz", None).0, 200);
    let (status, body) = http(&addr, "GET", "/api/v1/queues/dash", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(http(&addr, "POST", "/api/v1/queues/dash/pause", None).0, 401);
    assert_eq!(
        http(&addr, "POST", "/api/v1/queues/dash/pause", Some("wrong-token-1234")).0,
        401
    );
    let (status, body) = http(&addr, "POST", "/api/v1/queues/dash/pause", Some(&token));
    assert_eq!(status, 200, "{body}");
    assert!(
        f.inspector
            .stats(&f.inspector.queue("dash").await.unwrap())
            .await
            .unwrap()
            .paused
    );
    child.signal(Signal::SIGTERM);
    let status = child
        .exit_within(Duration::from_secs(20))
        .await
        .expect("it stops on SIGTERM");
    assert!(status.success(), "{status:?}: {}", child.log());
}
