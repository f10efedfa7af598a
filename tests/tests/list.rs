//! GET /v1/keys: pagination (offset and cursor), sorting, search, filters, validation of the
//! query, and what is never listed (deleted keys, secrets).
//!
//! Keys are created in a dedicated account and listed with `account=` so the bootstrap admin
//! key (in "default") does not disturb the counts.

use keyledger_e2e::*;
use std::collections::HashSet;

/// Creates one key per name in account `acct`; returns their ids in creation order.
async fn seed(h: &Harness, acct: &str, names: &[&str]) -> Vec<String> {
    let mut ids = Vec::new();
    for n in names {
        let (k, _) = h.create_key(json!({ "name": n, "account": acct })).await;
        ids.push(id_of(&k));
    }
    ids
}

async fn list(h: &Harness, query: &str) -> Value {
    h.get(&format!("/v1/keys?{query}"), &h.admin)
        .await
        .expect(200)
        .json()
}

fn names(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(|k| k["name"].as_str().expect("name").to_string())
        .collect()
}

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .expect("data array")
        .iter()
        .map(id_of)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_has_data_total_and_next_cursor() {
    let h = Harness::start().await;
    let created = seed(&h, "acme", &["a", "b", "c"]).await;
    let page = list(&h, "account=acme").await;
    assert_eq!(page["total"], 3);
    assert!(page["next_cursor"].is_null(), "single page: {page}");
    let got: HashSet<String> = ids(&page).into_iter().collect();
    assert_eq!(got, created.into_iter().collect());
    for k in page["data"].as_array().unwrap() {
        assert_key_shape(k);
        assert_eq!(k["account"], "acme");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_limit_is_50_and_total_counts_all_matches() {
    let h = Harness::start().await;
    let names: Vec<String> = (0..55).map(|i| format!("k{i:02}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    seed(&h, "bulk", &refs).await;
    let page = list(&h, "account=bulk").await;
    assert_eq!(page["data"].as_array().unwrap().len(), 50);
    assert_eq!(page["total"], 55);
    assert!(
        page["next_cursor"].is_string(),
        "more pages: {}",
        page["next_cursor"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_out_of_range_is_400_naming_limit() {
    let h = Harness::start().await;
    for q in ["limit=0", "limit=1001", "limit=-1", "limit=many"] {
        let err = h
            .get(&format!("/v1/keys?{q}"), &h.admin)
            .await
            .expect_error(400, "validation_failed");
        assert!(
            err["message"].as_str().unwrap().contains("limit"),
            "{q}: {err}"
        );
    }
    h.get("/v1/keys?limit=1000", &h.admin).await.expect(200);
    h.get("/v1/keys?limit=1", &h.admin).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_sort_or_order_is_400() {
    let h = Harness::start().await;
    let err = h
        .get("/v1/keys?sort=colour", &h.admin)
        .await
        .expect_error(400, "validation_failed");
    assert!(err["message"].as_str().unwrap().contains("sort"), "{err}");
    let err = h
        .get("/v1/keys?order=sideways", &h.admin)
        .await
        .expect_error(400, "validation_failed");
    assert!(err["message"].as_str().unwrap().contains("order"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_query_parameters_are_400_naming_them() {
    let h = Harness::start().await;
    let err = h
        .get("/v1/keys?page=2", &h.admin)
        .await
        .expect_error(400, "validation_failed");
    let message = err["message"].as_str().unwrap();
    assert!(
        message.starts_with("unknown query parameter `page`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_by_name_in_both_orders() {
    let h = Harness::start().await;
    seed(&h, "s", &["delta", "alpha", "charlie", "bravo"]).await;
    let asc = list(&h, "account=s&sort=name&order=asc").await;
    assert_eq!(names(&asc), ["alpha", "bravo", "charlie", "delta"]);
    let desc = list(&h, "account=s&sort=name&order=desc").await;
    assert_eq!(names(&desc), ["delta", "charlie", "bravo", "alpha"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_by_created_at_follows_creation_order() {
    let h = Harness::start().await;
    let created = seed(&h, "c", &["one", "two", "three", "four"]).await;
    let asc = list(&h, "account=c&sort=created_at&order=asc").await;
    assert_eq!(ids(&asc), created);
    let mut rev = created.clone();
    rev.reverse();
    let desc = list(&h, "account=c&sort=created_at&order=desc").await;
    assert_eq!(ids(&desc), rev);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_by_updated_at_puts_the_last_updated_last() {
    let h = Harness::start().await;
    let created = seed(&h, "u", &["x", "y", "z"]).await;
    // Timestamps have millisecond resolution: without a pause the update can share `z`'s
    // creation millisecond, and equal timestamps are ordered by id.
    tokio::time::sleep(std::time::Duration::from_millis(3)).await;
    h.patch(
        &format!("/v1/keys/{}", created[0]),
        &h.admin,
        &json!({ "name": "x2" }),
    )
    .await
    .expect(200);
    let asc = list(&h, "account=u&sort=updated_at&order=asc").await;
    assert_eq!(ids(&asc).last(), Some(&created[0]), "{asc}");
    let desc = list(&h, "account=u&sort=updated_at&order=desc").await;
    assert_eq!(ids(&desc).first(), Some(&created[0]), "{desc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_by_last_used_at_lists_every_key() {
    let h = Harness::start().await;
    let created = seed(&h, "lu", &["p", "q", "r"]).await;
    let page = list(&h, "account=lu&sort=last_used_at&order=desc").await;
    let got: HashSet<String> = ids(&page).into_iter().collect();
    assert_eq!(got, created.into_iter().collect());
    assert_eq!(page["total"], 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_pagination_walks_the_sorted_list() {
    let h = Harness::start().await;
    seed(&h, "o", &["e", "a", "d", "b", "c"]).await;
    let p1 = list(&h, "account=o&sort=name&order=asc&limit=2&offset=0").await;
    let p2 = list(&h, "account=o&sort=name&order=asc&limit=2&offset=2").await;
    let p3 = list(&h, "account=o&sort=name&order=asc&limit=2&offset=4").await;
    let p4 = list(&h, "account=o&sort=name&order=asc&limit=2&offset=10").await;
    assert_eq!(names(&p1), ["a", "b"]);
    assert_eq!(names(&p2), ["c", "d"]);
    assert_eq!(names(&p3), ["e"]);
    assert!(names(&p4).is_empty());
    for p in [&p1, &p2, &p3, &p4] {
        assert_eq!(p["total"], 5);
    }
}

/// Follows `next_cursor` from the first page; returns every id seen, in order.
async fn walk(h: &Harness, query: &str) -> Vec<String> {
    let mut seen = Vec::new();
    let mut page = list(h, query).await;
    for _ in 0..100 {
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            None => {
                assert!(page["next_cursor"].is_null(), "next_cursor: {page}");
                return seen;
            }
            Some(c) => {
                let url = reqwest::Url::parse_with_params(
                    &h.url(&format!("/v1/keys?{query}")),
                    &[("cursor", c)],
                )
                .unwrap();
                let q = url.query().unwrap().to_string();
                page = list(h, &q).await;
            }
        }
    }
    panic!("cursor pagination did not end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pagination_visits_every_key_exactly_once() {
    let h = Harness::start().await;
    let names: Vec<String> = (0..11).map(|i| format!("n{}", (i * 7) % 11)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let created: HashSet<String> = seed(&h, "cur", &refs).await.into_iter().collect();

    for query in [
        "account=cur&limit=3",
        "account=cur&limit=3&sort=name&order=asc",
        "account=cur&limit=4&sort=name&order=desc",
        "account=cur&limit=2&sort=created_at&order=desc",
        "account=cur&limit=5&sort=updated_at",
        "account=cur&limit=3&sort=last_used_at",
    ] {
        let seen = walk(&h, query).await;
        let unique: HashSet<String> = seen.iter().cloned().collect();
        assert_eq!(
            seen.len(),
            unique.len(),
            "duplicates with {query}: {seen:?}"
        );
        assert_eq!(unique, created, "every key with {query}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_pagination_handles_equal_sort_values() {
    let h = Harness::start().await;
    // Same name everywhere: the order must still be total.
    let created: HashSet<String> = seed(&h, "tie", &["same"; 7]).await.into_iter().collect();
    let seen = walk(&h, "account=tie&limit=2&sort=name").await;
    let unique: HashSet<String> = seen.iter().cloned().collect();
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert_eq!(unique, created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_is_a_case_insensitive_substring_of_name() {
    let h = Harness::start().await;
    seed(&h, "q", &["Alpha Prod", "alpha-dev", "Beta", "gamma ALPHA"]).await;
    let page = list(&h, "account=q&search=ALPHA&sort=name").await;
    let mut got = names(&page);
    got.sort();
    assert_eq!(got, ["Alpha Prod", "alpha-dev", "gamma ALPHA"]);
    assert_eq!(page["total"], 3);
    let none = list(&h, "account=q&search=zzz").await;
    assert_eq!(none["total"], 0);
    assert!(names(&none).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_by_role_enabled_owner_and_scope() {
    let h = Harness::start().await;
    let acct = "f";
    let (a, _) = h
        .create_key(
            json!({ "name": "a", "account": acct, "role": "owner", "owner": "u1",
                            "scopes": ["invoices:read"] }),
        )
        .await;
    let (b, _) = h
        .create_key(
            json!({ "name": "b", "account": acct, "role": "member", "owner": "u1",
                            "enabled": false, "scopes": ["invoices:read", "invoices:write"] }),
        )
        .await;
    let (c, _) = h
        .create_key(json!({ "name": "c", "account": acct, "role": "member", "owner": "u2" }))
        .await;
    let set = |v: &Value| -> HashSet<String> { ids(v).into_iter().collect() };
    let want = |ks: &[&Value]| -> HashSet<String> { ks.iter().map(|k| id_of(k)).collect() };

    assert_eq!(
        set(&list(&h, "account=f&role=member").await),
        want(&[&b, &c])
    );
    assert_eq!(set(&list(&h, "account=f&enabled=false").await), want(&[&b]));
    assert_eq!(
        set(&list(&h, "account=f&enabled=true").await),
        want(&[&a, &c])
    );
    assert_eq!(set(&list(&h, "account=f&owner=u1").await), want(&[&a, &b]));
    assert_eq!(
        set(&list(&h, "account=f&scope=invoices:write").await),
        want(&[&b])
    );
    assert_eq!(
        set(&list(&h, "account=f&scope=invoices:read").await),
        want(&[&a, &b])
    );
    let both = list(&h, "account=f&role=member&owner=u1").await;
    assert_eq!(set(&both), want(&[&b]));
    assert_eq!(both["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_filter_separates_tenants_for_admin() {
    let h = Harness::start().await;
    let acme = seed(&h, "acme", &["a1", "a2"]).await;
    let globex = seed(&h, "globex", &["g1"]).await;
    assert_eq!(ids(&list(&h, "account=acme&sort=created_at").await), acme);
    assert_eq!(ids(&list(&h, "account=globex").await), globex);
    // Without the filter the admin sees all accounts (plus its own key in "default").
    let all: HashSet<String> = ids(&list(&h, "limit=1000").await).into_iter().collect();
    for id in acme.iter().chain(&globex) {
        assert!(all.contains(id), "{id} missing from the unfiltered list");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_keys_are_not_listed() {
    let h = Harness::start().await;
    let created = seed(&h, "d", &["keep", "drop"]).await;
    h.delete(&format!("/v1/keys/{}", created[1]), &h.admin)
        .await
        .expect(204);
    let page = list(&h, "account=d").await;
    assert_eq!(ids(&page), [created[0].clone()]);
    assert_eq!(page["total"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_never_contains_secrets() {
    let h = Harness::start().await;
    let mut secrets = Vec::new();
    for n in ["s1", "s2", "s3"] {
        let (_, s) = h.create_key(json!({ "name": n, "account": "sec" })).await;
        secrets.push(s);
    }
    let r = h.get("/v1/keys?account=sec", &h.admin).await.expect(200);
    for s in &secrets {
        r.assert_absent(s);
    }
    r.assert_absent(&h.admin);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_needs_keys_read() {
    let h = Harness::start().await;
    let (_, verifier) = h
        .create_key(json!({ "name": "v", "scopes": ["keys:verify"] }))
        .await;
    h.get("/v1/keys", &verifier)
        .await
        .expect_error(403, "forbidden");
    let (_, reader) = h
        .create_key(json!({ "name": "r", "scopes": ["keys:read"] }))
        .await;
    h.get("/v1/keys", &reader).await.expect(200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_filter_or_cursor_values_are_400() {
    let h = Harness::start().await;
    for (q, field) in [
        ("enabled=maybe", "enabled"),
        ("cursor=garbage", "cursor"),
        ("offset=-3", "offset"),
    ] {
        let err = h
            .get(&format!("/v1/keys?{q}"), &h.admin)
            .await
            .expect_error(400, "validation_failed");
        assert!(
            err["message"].as_str().unwrap().contains(field),
            "{q}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_survives_deleting_the_last_key_of_a_page() {
    let h = Harness::start().await;
    seed(&h, "del", &["a", "b", "c", "d", "e", "f"]).await;
    let q = "account=del&sort=name&order=asc&limit=2";
    let p1 = list(&h, q).await;
    assert_eq!(names(&p1), ["a", "b"]);
    // Delete the key the cursor was taken at, and one not yet seen.
    let b = ids(&p1)[1].clone();
    h.delete(&format!("/v1/keys/{b}"), &h.admin)
        .await
        .expect(204);
    let all = list(&h, "account=del&sort=name&order=asc").await;
    let d = all["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["name"] == "d")
        .map(id_of)
        .unwrap();
    h.delete(&format!("/v1/keys/{d}"), &h.admin)
        .await
        .expect(204);

    let mut seen = names(&p1);
    let mut cursor = p1["next_cursor"].as_str().expect("a next page").to_string();
    for _ in 0..10 {
        let url = reqwest::Url::parse_with_params(
            &h.url(&format!("/v1/keys?{q}")),
            &[("cursor", &cursor)],
        )
        .unwrap();
        let page = list(&h, url.query().unwrap()).await;
        seen.extend(names(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["a", "b", "c", "e", "f"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursor_walk_sees_keys_created_meanwhile_at_the_end_once() {
    let h = Harness::start().await;
    let mut created = seed(&h, "grow", &["k0", "k1", "k2", "k3"]).await;
    let q = "account=grow&sort=created_at&order=asc&limit=2";
    let p1 = list(&h, q).await;
    created.extend(seed(&h, "grow", &["k4"]).await);
    let mut seen = ids(&p1);
    let mut cursor = p1["next_cursor"].as_str().expect("a next page").to_string();
    for _ in 0..10 {
        let url = reqwest::Url::parse_with_params(
            &h.url(&format!("/v1/keys?{q}")),
            &[("cursor", &cursor)],
        )
        .unwrap();
        let page = list(&h, url.query().unwrap()).await;
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, created);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_account_filter_is_refused_as_on_create_not_answered_with_nothing() {
    let h = Harness::start().await;
    for path in ["/v1/keys", "/v1/events", "/v1/events/stream"] {
        for account in ["", "..%2Fx", "a%20b"] {
            let err = h
                .get(&format!("{path}?account={account}"), &h.admin)
                .await
                .expect_invalid_field("account");
            assert_eq!(
                err["message"], "account: must match [A-Za-z0-9_-]{1,64}",
                "{path} {account:?}"
            );
        }
    }
}
