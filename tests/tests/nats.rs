//! Publishing to NATS JetStream against a real nats-server: every event exactly once, in order,
//! with subject and headers; across NATS crashes and keyledger crashes; and promptly to a core
//! subscriber.

use futures_util::StreamExt;
use keyledger_e2e::nats::{NatsServer, read_stream};
use keyledger_e2e::*;
use std::time::Duration;

/// Waits until the publisher is connected and has nothing left to publish.
async fn published(h: &Harness) {
    eventually(
        "the stream to hold every event",
        Duration::from_secs(30),
        async || {
            let r = h.get("/readyz", &h.admin).await.expect(200).json();
            (r["nats"]["connected"] == true && r["nats"]["lag_events"] == 0).then_some(())
        },
    )
    .await;
}

/// The stream holds the log, each event once, in log order.
fn assert_stream_is_the_log(messages: &[StreamMessage], head: u64) {
    let seqs: Vec<u64> = messages
        .iter()
        .map(|m| m.envelope["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        (1..=head).collect::<Vec<_>>(),
        "each event once, in order"
    );
}

use keyledger_e2e::nats::StreamMessage;

/// The `KEYLEDGER` stream's configuration and state, as the server reports them.
async fn stream_info(nats: &NatsServer) -> async_nats::jetstream::stream::Info {
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    let stream = js.get_stream("KEYLEDGER").await.unwrap();
    stream.get_info().await.unwrap()
}

/// The log cursor of the NATS publisher (keyledger_nats::CURSOR).
const NATS_CURSOR: &str = "nats";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_stream_once_in_order_with_subject_and_headers() {
    let nats = NatsServer::start();
    let h = Harness::start_publishing_to(&nats).await;
    let (k, _) = h
        .create_key(json!({ "name": "a", "account": "acme" }))
        .await;
    let path = format!("/v1/keys/{}", id_of(&k));
    h.patch(&path, &h.admin, &json!({ "role": "member" }))
        .await
        .expect(200);
    h.post(&format!("{path}/reset"), &h.admin, &json!({}))
        .await
        .expect(200);
    h.delete(&path, &h.admin).await.expect(204);
    published(&h).await;
    let head = h.log_head().await;
    assert_eq!(head, 5);
    let messages = read_stream(&nats.url(), head as usize, Duration::from_secs(10)).await;
    assert_stream_is_the_log(&messages, head);
    let log = h
        .get("/v1/events?limit=100", &h.admin)
        .await
        .expect(200)
        .json();
    for (m, e) in messages.iter().zip(log["data"].as_array().unwrap()) {
        assert_eq!(&m.envelope, e, "payload is the envelope");
        let ty = e["type"].as_str().unwrap().strip_prefix("key.").unwrap();
        assert_eq!(
            m.subject,
            format!(
                "keyledger.keys.{}.{}.{ty}",
                e["account"].as_str().unwrap(),
                e["key_id"].as_str().unwrap()
            )
        );
        assert_eq!(m.headers["Nats-Msg-Id"], e["id"].as_str().unwrap());
        assert_eq!(m.headers["Keyledger-Seq"], e["seq"].to_string());
        assert_eq!(m.headers["Keyledger-Hash"], e["hash"].as_str().unwrap());
        assert_eq!(
            m.headers["Keyledger-Signature"],
            e["signature"].as_str().unwrap()
        );
    }
    let metrics = h.get("/metrics", &h.admin).await.expect(200);
    let text = metrics.body;
    assert!(text.contains("keyledger_nats_connected 1"), "{text}");
    assert!(text.contains("keyledger_nats_lag_events 0"), "{text}");
}

/// The shorter window only spares the server memory (it holds every message id of the window);
/// exactly-once does not depend on it (see the crash tests below).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stream_keyledger_creates_keeps_message_ids_for_thirty_seconds_on_its_subjects() {
    let nats = NatsServer::start();
    let h = Harness::start_publishing_to(&nats).await;
    h.create_key(json!({ "name": "a" })).await;
    published(&h).await;
    let info = stream_info(&nats).await;
    assert_eq!(info.config.duplicate_window, Duration::from_secs(30));
    assert_eq!(info.config.subjects, vec!["keyledger.keys.>".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_succeed_while_nats_is_down_and_every_event_arrives_once_after_it_returns() {
    let mut nats = NatsServer::start();
    let h = Harness::start_publishing_to(&nats).await;
    for i in 0..20 {
        h.create_key(json!({ "name": format!("before{i}") })).await;
    }
    // A crash of NATS in the middle of the load.
    let load = {
        let (client, url, admin) = (reqwest::Client::new(), h.url("/v1/keys"), h.admin.clone());
        tokio::spawn(async move {
            for i in 0..150 {
                let r = client
                    .post(&url)
                    .bearer_auth(&admin)
                    .json(&json!({ "name": format!("during{i}") }))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 201, "commands never wait for NATS");
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    nats.kill();
    load.await.unwrap();
    for i in 0..20 {
        h.create_key(json!({ "name": format!("down{i}") })).await;
    }
    let down = h.get("/readyz", &h.admin).await.expect(200).json();
    assert_eq!(
        down["status"], "ready",
        "NATS being down does not make keyledger unready"
    );
    nats.restart();
    published(&h).await;
    let head = h.log_head().await;
    assert_eq!(head, 1 + 20 + 150 + 20);
    let messages = read_stream(&nats.url(), head as usize, Duration::from_secs(10)).await;
    assert_stream_is_the_log(&messages, head);
}

/// An outage while no event waits must show too: an operator alerting on `connected` would
/// otherwise learn of it only with the next revocation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_with_nothing_to_publish_shows_in_readyz_and_ends_there() {
    let mut nats = NatsServer::start();
    let h = Harness::start_publishing_to(&nats).await;
    published(&h).await;
    nats.kill();
    let connected = async |want: bool| {
        let r = h.get("/readyz", &h.admin).await.expect(200).json();
        (r["nats"]["connected"] == want).then_some(r)
    };
    let down = eventually(
        "readyz to report the outage",
        Duration::from_secs(10),
        async || connected(false).await,
    )
    .await;
    assert_eq!(down["nats"]["lag_events"], 0, "{down}");
    nats.restart();
    eventually(
        "readyz to report the reconnection",
        Duration::from_secs(15),
        async || connected(true).await,
    )
    .await;
    h.create_key(json!({ "name": "after" })).await;
    published(&h).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_from_the_start_is_caught_up_later() {
    let mut nats = NatsServer::start();
    nats.kill();
    let h = Harness::start_publishing_to(&nats).await;
    h.create_key(json!({ "name": "x" })).await;
    let r = eventually(
        "readyz to report the outage",
        Duration::from_secs(10),
        async || {
            let r = h.get("/readyz", &h.admin).await.expect(200).json();
            // The age of the oldest unpublished event, also when NATS was never reached.
            let lag = r["nats"]["lag_seconds"].as_f64().unwrap_or(0.0);
            (r["nats"]["lag_events"].as_u64() == Some(2) && lag > 0.0).then_some(r)
        },
    )
    .await;
    assert_eq!(r["nats"]["connected"], false);
    nats.restart();
    published(&h).await;
    let messages = read_stream(&nats.url(), 2, Duration::from_secs(10)).await;
    assert_stream_is_the_log(&messages, 2);
}

/// keyledger dies after the stream acknowledged events but before it recorded its cursor: on
/// restart it resumes after what the stream holds, so nothing is published twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_publish_and_cursor_write_leaves_no_duplicate() {
    let nats = NatsServer::start();
    crash_between_publish_and_cursor_write(&nats, Duration::ZERO).await;
}

/// The same, on a stream whose de-duplication window has passed by the restart: exactly-once
/// rests on the resume point and `Nats-Expected-Last-Sequence`, not on the window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_duplicate_after_a_crash_even_once_the_deduplication_window_has_passed() {
    let nats = NatsServer::start();
    let js = async_nats::jetstream::new(async_nats::connect(nats.url()).await.unwrap());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "KEYLEDGER".into(),
        subjects: vec!["keyledger.keys.>".into()],
        duplicate_window: Duration::from_millis(500),
        ..Default::default()
    })
    .await
    .unwrap();
    crash_between_publish_and_cursor_write(&nats, Duration::from_secs(1)).await;
}

/// Publishes 11 events, stops keyledger, rewinds its cursor to 3 (what a crash before the
/// cursor write leaves), waits `down`, restarts, publishes one more: the stream must hold the
/// 12 events once each, in order.
async fn crash_between_publish_and_cursor_write(nats: &NatsServer, down: Duration) {
    let mut h = Harness::start_publishing_to(nats).await;
    for i in 0..10 {
        h.create_key(json!({ "name": format!("k{i}") })).await;
    }
    published(&h).await;
    h.stop().await;
    // The state a crash before the cursor write leaves behind.
    let log = keyledger_service::open_log(&keyledger_service::Config::new(h.data_dir())).unwrap();
    assert_eq!(log.cursor(NATS_CURSOR).unwrap(), 11);
    log.set_cursor(NATS_CURSOR, 3).unwrap();
    drop(log);
    tokio::time::sleep(down).await;
    h.restart().await;
    h.create_key(json!({ "name": "after" })).await;
    published(&h).await;
    let messages = read_stream(&nats.url(), 12, Duration::from_secs(10)).await;
    assert_stream_is_the_log(&messages, 12);
    let info = stream_info(nats).await;
    assert_eq!(info.state.messages, 12, "nothing was published twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_core_subscriber_on_rotated_sees_a_reset_promptly() {
    let nats = NatsServer::start();
    let h = Harness::start_publishing_to(&nats).await;
    let (k, _) = h
        .create_key(json!({ "name": "gw", "account": "acme" }))
        .await;
    published(&h).await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut sub = client
        .subscribe("keyledger.keys.*.*.rotated")
        .await
        .unwrap();
    client.flush().await.unwrap();
    h.post(
        &format!("/v1/keys/{}/reset", id_of(&k)),
        &h.admin,
        &json!({ "grace_seconds": 60 }),
    )
    .await
    .expect(200);
    let msg = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("the rotation within 5 s")
        .expect("subscription open");
    assert_eq!(
        msg.subject.as_str(),
        format!("keyledger.keys.acme.{}.rotated", id_of(&k))
    );
    let env: Value = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(env["type"], "key.rotated");
    assert_eq!(env["data"]["grace_seconds"], 60);
    assert!(msg.headers.unwrap().get("Keyledger-Seq").is_some());
}
