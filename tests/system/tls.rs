//! TLS: the engine's smoke scenario over `rediss://` against a TLS-only redis-server whose
//! certificates the test makes; a wrong CA and a missing client certificate are refused with
//! errors that say so (and never show the password).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rivulet::connection::{self, TlsOptions};
use rivulet::testing::tls::TlsRedis;
use rivulet::{Client, DlqSelect, HandlerError, Inspector, Queue, Router, Task, TaskContext, Worker};

use rivulet::testing::{fast_config, outstanding, wait_until};

/// Enqueue over every priority, drain, a fatal task to the dead-letter stream, replay it:
/// everything a worker and a producer do, through TLS.
async fn smoke(redis: redis::Client) {
    let queue = Queue::new("tls-smoke").unwrap().shards(2).unwrap();
    let client = Client::new(&redis).await.unwrap();
    let ok = Arc::new(AtomicU32::new(0));
    let healed = Arc::new(AtomicU32::new(0));
    let (ok2, healed2) = (ok.clone(), healed.clone());
    let router = Router::new().route("job", move |_ctx: TaskContext, fatal: bool| {
        let (ok, healed) = (ok2.clone(), healed2.clone());
        async move {
            if fatal && healed.load(Ordering::SeqCst) == 0 {
                return Err(HandlerError::fatal("not yet"));
            }
            ok.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let tasks: Vec<Task> = (0..300u32)
        .map(|i| {
            Task::json("job", &false)
                .unwrap()
                .priority(["high", "normal", "low"][i as usize % 3])
        })
        .chain([Task::json("job", &true).unwrap()])
        .collect();
    client.enqueue_many(&queue, tasks).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(
        Worker::new(redis.clone(), router, fast_config())
            .queue(queue.clone())
            .run(async {
                let _ = stopped.await;
            }),
    );
    let inspector = Inspector::new(&redis).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || {
        let (inspector, queue, ok) = (inspector.clone(), queue.clone(), ok.clone());
        async move {
            ok.load(Ordering::SeqCst) == 300 && inspector.dlq_list(&queue, None, 10).await.unwrap().len() == 1
        }
    })
        .await,
        "300 tasks done and one dead letter"
    );
    healed.store(1, Ordering::SeqCst);
    assert_eq!(inspector.dlq_replay(&queue, &DlqSelect::All).await.unwrap(), 1);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let ok = ok.clone();
            async move { ok.load(Ordering::SeqCst) == 301 }
        })
        .await,
        "the replayed task done"
    );
    let _ = stop.send(());
    let report = worker.await.unwrap().unwrap();
    assert_eq!((report.succeeded, report.failed), (301, 1), "{report:?}");
    assert_eq!(outstanding(&inspector, &queue).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_scenario_runs_over_tls_with_the_servers_ca() {
    let server = TlsRedis::start();
    smoke(connection::open(&server.url(), &server.tls()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smoke_scenario_runs_over_mutual_tls_with_a_client_certificate() {
    let server = TlsRedis::start_mutual();
    smoke(connection::open(&server.url(), &server.mutual_tls()).unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_signed_by_another_ca_is_refused_with_a_certificate_error() {
    let server = TlsRedis::start();
    let url = server.url().replace("rediss://", "rediss://:s3cret@");
    let wrong = TlsOptions {
        ca_file: Some(server.certs().other_ca()),
        ..TlsOptions::default()
    };
    let e = Client::new(&connection::open(&url, &wrong).unwrap()).await.unwrap_err();
    let rivulet::Error::Redis(cause) = &e else {
        panic!("expected a redis error, got {e:?}");
    };
    assert!(connection::is_certificate_error(cause), "{e}");
    assert!(e.to_string().contains("UnknownIssuer"), "{e}");
    assert!(!e.to_string().contains("s3cret"), "{e}");
    // Opting out of verification gets through (the server has no password set, so the
    // URL's is refused by AUTH; without it, PING works).
    let insecure = TlsOptions {
        insecure: true,
        ..TlsOptions::default()
    };
    let client = Client::new(&connection::open(&server.url(), &insecure).unwrap()).await;
    assert!(client.is_ok(), "{:?}", client.err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_requires_client_certificates_refuses_a_client_without_one() {
    let server = TlsRedis::start_mutual();
    let e = Client::new(&connection::open(&server.url(), &server.tls()).unwrap())
        .await
        .unwrap_err();
    assert!(matches!(e, rivulet::Error::Redis(_)), "{e:?}");
}
