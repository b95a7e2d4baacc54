//! TLS through the binary: workers and admin commands over mutual TLS with the `--tls-*` flags
//! (and their `REDIS_TLS_*` variables, handed to worker processes), a wrong CA, bad flag
//! combinations, `--tls-insecure`'s warning, and every place that offers `rediss://`.

use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::Signal;
use rivulet::Inspector;

use crate::common::{BIN, Supervisor, cli_env, cli_json_at, wait_settled};

#[tokio::test]
async fn workers_and_admin_commands_run_over_mutual_tls_with_the_tls_flags() {
    let server = rivulet::testing::tls::TlsRedis::start_mutual();
    let url = server.url();
    let certs = server.certs();
    let (ca, (cert, key)) = (certs.ca(), certs.client());
    let (ca, cert, key) = (ca.to_str().unwrap(), cert.to_str().unwrap(), key.to_str().unwrap());
    let tls = ["--tls-ca-file", ca, "--tls-cert-file", cert, "--tls-key-file", key];
    let with_tls =
        |args: &[&'static str]| -> Vec<String> { args.iter().copied().chain(tls).map(str::to_owned).collect() };
    let mut sup = Supervisor::start_at(
        &url,
        &with_tls(&["--workers", "2", "--concurrency", "4", "--queue", "tls"])
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    );
    let run = |args: Vec<String>| {
        let url = url.clone();
        async move { cli_json_at(&url, &args.iter().map(String::as_str).collect::<Vec<_>>()).await }
    };
    run(with_tls(&[
        "enqueue", "--queue", "tls", "--kind", "noop", "--count", "20", "--json",
    ]))
    .await;
    run(with_tls(&["enqueue", "--queue", "tls", "--kind", "fail", "--json"])).await;
    let inspector = Inspector::new(&server.client()).await.unwrap();
    wait_settled(&inspector, "tls", (20, 1), Duration::from_secs(60)).await;
    let stats = run(with_tls(&["stats", "--queue", "tls", "--json"])).await;
    assert!(stats.to_string().contains("\"done\":20"), "{stats}");
    let dead = run(with_tls(&["dlq", "list", "--queue", "tls", "--json"])).await;
    assert_eq!(dead.as_array().map(Vec::len), Some(1), "{dead}");
    sup.signal(Signal::SIGTERM);
    assert_eq!(
        sup.exit_within(Duration::from_secs(30)).await.and_then(|s| s.code()),
        Some(0),
        "{}",
        sup.log()
    );

    // The environment variables work as the flags do.
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(["stats", "--queue", "tls", "--json"])
        .env("REDIS_URL", &url)
        .env("REDIS_TLS_CA_FILE", ca)
        .env("REDIS_TLS_CERT_FILE", cert)
        .env("REDIS_TLS_KEY_FILE", key)
        .stdin(Stdio::null());
    let out = cmd.output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn tls_mistakes_are_named_a_wrong_ca_exits_1_and_a_bad_combination_exits_2() {
    let server = rivulet::testing::tls::TlsRedis::start();
    let certs = server.certs();
    let url = server.url().replace("rediss://", "rediss://:s3cret@");
    let other = certs.other_ca();
    let out = cli_env(
        Some(&url),
        &["stats", "--json", "--tls-ca-file", other.to_str().unwrap()],
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("TLS handshake") && stderr.contains("--tls-ca-file"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");

    // TLS flags on a plain URL, a certificate without its key, a CA file that is not there.
    let plain = "redis://:s3cret@127.0.0.1:1";
    for (env_url, args, needle) in [
        (plain, vec!["stats", "--tls-insecure"], "rediss://"),
        (url.as_str(), vec!["stats", "--tls-cert-file", "/x.pem"], "key"),
        (
            url.as_str(),
            vec!["stats", "--tls-ca-file", "/nonexistent/ca.pem"],
            "/nonexistent/ca.pem",
        ),
    ] {
        let out = cli_env(Some(env_url), &args).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(!stderr.contains("s3cret"), "{stderr}");
    }

    // Every place that offers rediss:// also says how to use it.
    let help = cli_env(None, &["--help"]).await;
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "rediss://",
        "--tls-ca-file",
        "--tls-cert-file",
        "--tls-key-file",
        "--tls-insecure",
    ] {
        assert!(help.contains(flag), "--help lacks {flag}:\n{help}");
    }
    let out = cli_env(Some("rediss://h:notaport"), &["stats"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(2) && stderr.contains("rediss://host:6380 (TLS)"),
        "{stderr}"
    );

    // Verification off: it connects, and says loudly that it does not verify.
    let out = cli_env(Some(&server.url()), &["stats", "--json", "--tls-insecure"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("verification is off"), "{stderr}");
}
