//! The history endpoints of SPEC §3: a key's events, the global log, `as_of`, and the signing
//! key. Envelope checks are structural (linkage, formats); recomputing hashes and signatures
//! is the job of `keyledger audit verify` and the store's own tests.

use keyledger_e2e::*;
use reqwest::Method;

const ENVELOPE_FIELDS: &[&str] = &[
    "seq",
    "id",
    "type",
    "schema",
    "key_id",
    "account",
    "version",
    "occurred_at",
    "actor",
    "data",
    "prev_hash",
    "hash",
    "signature",
    "signer",
];

fn is_hex64(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Creates, updates, rotates and deletes one key; returns (id, every secret it had).
async fn lifecycle(h: &Harness) -> (String, Vec<String>) {
    let (key, s1) = h
        .create_key(json!({ "name": "v1", "account": "acme" }))
        .await;
    let id = id_of(&key);
    let path = format!("/v1/keys/{id}");
    h.patch(&path, &h.admin, &json!({ "name": "v2" }))
        .await
        .expect(200);
    let v = h
        .post(&format!("{path}/reset"), &h.admin, &json!({}))
        .await
        .expect(200)
        .json();
    let s2 = v["secret"].as_str().unwrap().to_string();
    h.delete(&path, &h.admin).await.expect(204);
    (id, vec![s1, s2])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_history_lists_every_event_in_order() {
    let h = Harness::start().await;
    let (id, secrets) = lifecycle(&h).await;
    let r = h
        .get(&format!("/v1/keys/{id}/events"), &h.admin)
        .await
        .expect(200);
    for s in &secrets {
        r.assert_absent(s);
    }
    let v = r.json();
    let events = v["data"].as_array().expect("data array");
    let types: Vec<&str> = events.iter().map(|e| e["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        ["key.created", "key.updated", "key.rotated", "key.deleted"]
    );
    for (i, e) in events.iter().enumerate() {
        for f in ENVELOPE_FIELDS {
            assert!(e.get(*f).is_some(), "event lacks `{f}`: {e}");
        }
        assert_eq!(e["key_id"], id.as_str());
        assert_eq!(e["account"], "acme");
        assert_eq!(e["version"], i as u64 + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_log_is_gapless_and_hash_chained() {
    let h = Harness::start().await;
    lifecycle(&h).await;
    let r = h.get("/v1/events?limit=1000", &h.admin).await.expect(200);
    let v = r.json();
    let events = v["data"].as_array().expect("data array");
    assert!(events.len() >= 5, "bootstrap + 4 lifecycle events: {v}");
    let signers: Vec<Value> = h.get("/v1/signing-key", &h.admin).await.expect(200).json()["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].clone())
        .collect();
    let mut prev = "0".repeat(64);
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e["seq"], i as u64 + 1, "gapless from 1: {e}");
        assert_eq!(e["prev_hash"], prev.as_str(), "chain at seq {}", e["seq"]);
        assert!(is_hex64(&e["hash"]), "{e}");
        let sig = e["signature"].as_str().unwrap();
        assert_eq!(sig.len(), 88, "base64 of 64 bytes: {sig}");
        assert!(signers.contains(&e["signer"]), "unknown signer: {e}");
        prev = e["hash"].as_str().unwrap().to_string();
    }
    assert_eq!(v["next_after"], events.len() as u64);
    // The bootstrap key was made by the system; the rest by the admin key.
    assert_eq!(events[0]["actor"], "system");
    let admin_id = h.get("/v1/me", &h.admin).await.json()["id"].clone();
    assert_eq!(events.last().unwrap()["actor"], admin_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_log_pages_with_after_and_filters_by_type() {
    let h = Harness::start().await;
    lifecycle(&h).await;
    let first = h
        .get("/v1/events?limit=2", &h.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    let after = first["next_after"].as_u64().expect("next_after");
    assert_eq!(after, 2);
    let rest = h
        .get(&format!("/v1/events?after={after}&limit=1000"), &h.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(rest["data"][0]["seq"], 3);
    let rotated = h
        .get("/v1/events?type=key.rotated", &h.admin)
        .await
        .expect(200)
        .json();
    let data = rotated["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["type"], "key.rotated");
    let acme = h
        .get("/v1/events?account=acme", &h.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(acme["data"].as_array().unwrap().len(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_log_needs_events_read() {
    let h = Harness::start().await;
    let (_, reader) = h
        .create_key(json!({ "name": "r", "scopes": ["keys:read"] }))
        .await;
    h.get("/v1/events", &reader)
        .await
        .expect_error(403, "forbidden");
    let (_, auditor) = h
        .create_key(json!({ "name": "a", "scopes": ["events:read"] }))
        .await;
    h.get("/v1/events", &auditor).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_of_returns_a_past_state_of_the_key() {
    let h = Harness::start().await;
    let (key, _) = h.create_key(json!({ "name": "then" })).await;
    let id = id_of(&key);
    h.patch(
        &format!("/v1/keys/{id}"),
        &h.admin,
        &json!({ "name": "now" }),
    )
    .await
    .expect(200);
    let history = h
        .get(&format!("/v1/keys/{id}/events"), &h.admin)
        .await
        .expect(200)
        .json();
    let created_seq = history["data"][0]["seq"].as_u64().expect("seq");
    let past = h
        .get(&format!("/v1/keys/{id}?as_of={created_seq}"), &h.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(past["name"], "then");
    assert_eq!(past["version"], 1);
    assert_eq!(h.get_key(&id).await["name"], "now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_key_is_published_as_ed25519() {
    let h = Harness::start().await;
    let v = h.get("/v1/signing-key", &h.admin).await.expect(200).json();
    let keys = v["keys"].as_array().expect("keys array");
    assert!(!keys.is_empty());
    for k in keys {
        assert_eq!(k["algorithm"], "ed25519");
        let pk = k["public_key"].as_str().expect("public_key");
        assert_eq!(pk.len(), 44, "standard base64 of 32 bytes: {pk}");
        assert!(k["id"].is_string() && k["created_at"].is_string(), "{k}");
        assert!(
            k.get("private_key").is_none() && k.get("secret_key").is_none(),
            "{k}"
        );
    }
}

/// A cursor past the head cannot come from this log (another log, or a restore from backup):
/// following it would silently skip every event up to it, so it is refused, on the page and on
/// the stream alike. The head itself is a valid cursor: nothing yet, then what comes next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_beyond_the_head_is_refused_not_followed() {
    let h = Harness::start().await;
    lifecycle(&h).await;
    let head = h.log_head().await;
    let page = h
        .get(&format!("/v1/events?after={head}"), &h.admin)
        .await
        .expect(200)
        .json();
    assert_eq!(page["data"], json!([]));
    assert_eq!(page["next_after"], head);
    let beyond = head + 1;
    let err = h
        .get(&format!("/v1/events?after={beyond}"), &h.admin)
        .await
        .expect_invalid_field("after");
    let message = err["message"].as_str().unwrap();
    assert!(message.contains(&format!("({head})")), "{message}");
    h.get(&format!("/v1/events/stream?after={beyond}"), &h.admin)
        .await
        .expect_invalid_field("after");
    let resp = h
        .request(Method::GET, "/v1/events/stream?after=0")
        .bearer_auth(&h.admin)
        .header("Last-Event-ID", beyond.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Last-Event-ID:"),
        "{body}"
    );
    // The same for a point in a key's history.
    let (key, _) = h.create_key(json!({ "name": "k" })).await;
    let path = format!("/v1/keys/{}", id_of(&key));
    let head = h.log_head().await;
    h.get(&format!("{path}?as_of={head}"), &h.admin)
        .await
        .expect(200);
    h.get(&format!("{path}?as_of={}", head + 1), &h.admin)
        .await
        .expect_invalid_field("as_of");
}

/// A `Last-Event-ID` that cannot be read is refused: ignoring it would start the stream over
/// from `after` (by default the whole history) without the client knowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_last_event_id_is_refused_not_ignored() {
    let h = Harness::start().await;
    lifecycle(&h).await;
    for bad in ["abc", "-5", "1.5", "７"] {
        let resp = h
            .request(Method::GET, "/v1/events/stream")
            .bearer_auth(&h.admin)
            .header("Last-Event-ID", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{bad:?}");
        let body: Value = resp.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.starts_with("Last-Event-ID:"), "{bad:?}: {body}");
    }
    // An empty one is none (SSE clients send none when the last event had an empty id).
    let resp = h
        .request(Method::GET, "/v1/events/stream")
        .bearer_auth(&h.admin)
        .header("Last-Event-ID", " ")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}
