//! The autoscaler says when its numbers go stale: with Redis killed, `rivulet_autoscaler_up`
//! drops to 0, the observation error counter moves, `/readyz` answers 503 while `/healthz`
//! still answers 200.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Duration;

use rivulet::testing::{ChildGuard, RedisServer, has_metric, http_get, metric_sum, wait_until};

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    http_get(port, path, None)
}

/// The value of an unlabelled metric in a Prometheus text body.
fn metric(body: &str, name: &str) -> Option<f64> {
    has_metric(body, name).then(|| metric_sum(body, name, &[]))
}

#[tokio::test]
async fn metrics_and_probes_say_when_redis_is_away() {
    let mut server = RedisServer::start();
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_autoscaler"));
    cmd.args(["--redis-url", &server.url(), "--queue", "q", "--dry-run"])
        .args(["--interval", "200ms", "--metrics-addr", &addr])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    let _daemon = ChildGuard::spawn("autoscaler", &mut cmd);

    let ready = wait_until(Duration::from_secs(30), async || {
        get(port, "/readyz").is_some_and(|(code, _)| code == 200)
    })
    .await;
    assert!(ready, "never ready: {:?}", get(port, "/readyz"));
    let (code, body) = get(port, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(metric(&body, "rivulet_autoscaler_up"), Some(1.0), "{body}");
    assert!(
        metric(&body, "rivulet_autoscaler_last_observation_timestamp_seconds").is_some_and(|t| t > 1.6e9),
        "{body}"
    );
    assert_eq!(
        metric(&body, "rivulet_autoscaler_observation_errors_total"),
        Some(0.0),
        "{body}"
    );

    server.kill();
    let down = wait_until(Duration::from_secs(60), async || {
        get(port, "/metrics").is_some_and(|(_, body)| {
            metric(&body, "rivulet_autoscaler_up") == Some(0.0)
                && metric(&body, "rivulet_autoscaler_observation_errors_total").is_some_and(|n| n >= 1.0)
        })
    })
    .await;
    assert!(down, "up never dropped to 0: {:?}", get(port, "/metrics"));
    let unready = wait_until(Duration::from_secs(60), async || {
        get(port, "/readyz").is_some_and(|(code, _)| code == 503)
    })
    .await;
    let probe = get(port, "/readyz");
    assert!(unready, "still ready with Redis gone: {probe:?}");
    let (_, why) = probe.unwrap();
    assert!(why.contains("last successful observation"), "{why}");
    // Alive all along: a liveness probe must not restart a daemon that waits for Redis.
    assert_eq!(get(port, "/healthz").map(|(code, _)| code), Some(200));
}
