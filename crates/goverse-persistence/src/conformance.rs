//! The contract every [`ObjectStore`] keeps. Each implementation's tests call [`run_all`] on an
//! empty store (PostgreSQL's against a real server).

use std::time::Duration;

use goverse_core::{ObjectId, ShardId};

use crate::{
    Fence, ObjectStore, Refusal, ReliableCall, ReliableResult, StateChange, StoredObject, Write,
};

pub(crate) async fn run_all(store: &dyn ObjectStore) {
    store
        .check()
        .await
        .expect("an empty store passes its check");
    missing_objects_load_as_none(store).await;
    claims_raise_epochs_past_what_the_store_holds(store).await;
    save_then_load_round_trips(store).await;
    a_stale_or_unclaimed_fence_is_refused_and_keeps_data(store).await;
    fencing_follows_the_owner_not_the_last_writer(store).await;
    deletes_are_fenced_and_idempotent(store).await;
    batches_refuse_items_alone_and_apply_in_order(store).await;
    loads_batch_in_request_order(store).await;
    reliable_records_commit_with_the_state(store).await;
    a_taken_call_id_refuses_the_whole_write(store).await;
    ids_are_opaque_strings_and_state_bytes_round_trip(store).await;
    status_counts_what_is_stored(store).await;
    old_reliable_records_are_pruned(store).await;
}

fn id(s: &str) -> ObjectId {
    ObjectId::from(s)
}

/// Claims `shard` and returns its fence.
async fn claim(store: &dyn ObjectStore, shard: u32) -> Fence {
    let shard = ShardId(shard);
    let epoch = store
        .claim_shards(&[Fence { shard, epoch: 1 }])
        .await
        .unwrap()[0];
    Fence { shard, epoch }
}

fn save<'a>(id: &'a ObjectId, data: &'a [u8], fence: Fence) -> Write<'a> {
    Write {
        id,
        object_type: "Counter",
        change: StateChange::Save(data),
        fence,
        reliable: None,
    }
}

/// Compares state bytes the way the store promises to keep them: JSON as an equal JSON value
/// (a JSONB column normalises spacing and key order), anything else byte for byte.
fn assert_same_state(got: &[u8], want: &[u8]) {
    let as_json = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).ok();
    match (as_json(got), as_json(want)) {
        (Some(g), Some(w)) => assert_eq!(g, w),
        _ => assert_eq!(got, want),
    }
}

async fn loaded(store: &dyn ObjectStore, object: &str) -> Option<StoredObject> {
    store.load(&id(object)).await.unwrap()
}

async fn missing_objects_load_as_none(store: &dyn ObjectStore) {
    assert_eq!(loaded(store, "conf-missing").await, None);
}

async fn claims_raise_epochs_past_what_the_store_holds(store: &dyn ObjectStore) {
    let claims = [
        Fence {
            shard: ShardId(40),
            epoch: 1,
        },
        Fence {
            shard: ShardId(41),
            epoch: 7,
        },
    ];
    assert_eq!(store.claim_shards(&claims).await.unwrap(), vec![1, 7]);
    // Claiming again always moves past the stored epoch, whatever the claimant asks for: a node
    // restarted with a fresh cluster store (asking for 1) still fences its previous run.
    assert_eq!(store.claim_shards(&claims).await.unwrap(), vec![2, 8]);
    let higher = [Fence {
        shard: ShardId(40),
        epoch: 20,
    }];
    assert_eq!(store.claim_shards(&higher).await.unwrap(), vec![20]);
    let zero = [Fence {
        shard: ShardId(42),
        epoch: 0,
    }];
    assert_eq!(store.claim_shards(&zero).await.unwrap(), vec![1]);
}

async fn save_then_load_round_trips(store: &dyn ObjectStore) {
    let fence = claim(store, 1).await;
    let a = id("conf-a");
    store
        .commit(&[save(&a, br#"{"value":1}"#, fence)])
        .await
        .unwrap()[0]
        .clone()
        .unwrap();
    let got = loaded(store, "conf-a").await.unwrap();
    assert_eq!(got.object_type, "Counter");
    assert_same_state(&got.data, br#"{"value":1}"#);
    assert_eq!(got.epoch, fence.epoch);
    store
        .save(&a, "Counter", br#"{"value":2}"#, fence)
        .await
        .unwrap()
        .unwrap();
    assert_same_state(
        &loaded(store, "conf-a").await.unwrap().data,
        br#"{"value":2}"#,
    );
}

async fn a_stale_or_unclaimed_fence_is_refused_and_keeps_data(store: &dyn ObjectStore) {
    let old = claim(store, 2).await;
    let c = id("conf-c");
    store.save(&c, "Counter", b"1", old).await.unwrap().unwrap();
    let new = claim(store, 2).await;
    assert!(new.epoch > old.epoch);
    let refused = store.save(&c, "Counter", b"2", old).await.unwrap();
    assert_eq!(
        refused,
        Err(Refusal::StaleFence {
            shard: ShardId(2),
            current: new.epoch,
            given: old.epoch
        })
    );
    assert_same_state(&loaded(store, "conf-c").await.unwrap().data, b"1");
    // An epoch the store never handed out is refused too, as is a shard nobody claimed.
    let ahead = Fence {
        shard: ShardId(2),
        epoch: new.epoch + 1,
    };
    assert!(
        store
            .save(&c, "Counter", b"3", ahead)
            .await
            .unwrap()
            .is_err()
    );
    let unclaimed = Fence {
        shard: ShardId(99),
        epoch: 1,
    };
    assert_eq!(
        store
            .save(&id("conf-c2"), "Counter", b"1", unclaimed)
            .await
            .unwrap(),
        Err(Refusal::StaleFence {
            shard: ShardId(99),
            current: 0,
            given: 1
        })
    );
    assert_eq!(loaded(store, "conf-c2").await, None);
    store.save(&c, "Counter", b"4", new).await.unwrap().unwrap();
    assert_same_state(&loaded(store, "conf-c").await.unwrap().data, b"4");
}

async fn fencing_follows_the_owner_not_the_last_writer(store: &dyn ObjectStore) {
    // The old owner never wrote this object, and neither has the new owner yet: the old
    // owner's write is still refused, because the shard's epoch moved on when it was claimed.
    let old = claim(store, 3).await;
    let _new = claim(store, 3).await;
    let refused = store
        .save(&id("conf-untouched"), "Counter", b"1", old)
        .await
        .unwrap();
    assert!(matches!(refused, Err(Refusal::StaleFence { .. })));
    assert_eq!(loaded(store, "conf-untouched").await, None);
}

async fn deletes_are_fenced_and_idempotent(store: &dyn ObjectStore) {
    let old = claim(store, 4).await;
    let d = id("conf-d");
    store.save(&d, "Counter", b"7", old).await.unwrap().unwrap();
    let new = claim(store, 4).await;
    assert!(matches!(
        store.delete(&d, "Counter", old).await.unwrap(),
        Err(Refusal::StaleFence { .. })
    ));
    assert!(loaded(store, "conf-d").await.is_some());
    store.delete(&d, "Counter", new).await.unwrap().unwrap();
    store.delete(&d, "Counter", new).await.unwrap().unwrap();
    assert_eq!(loaded(store, "conf-d").await, None);
}

async fn batches_refuse_items_alone_and_apply_in_order(store: &dyn ObjectStore) {
    let stale = claim(store, 5).await;
    let good = claim(store, 6).await;
    let _ = claim(store, 5).await;
    let (a, b, c) = (id("conf-e1"), id("conf-e2"), id("conf-e3"));
    let results = store
        .commit(&[
            save(&a, b"1", good),
            save(&b, b"lost", stale),
            save(&a, b"2", good),
            save(&c, b"gone", good),
            Write {
                id: &c,
                object_type: "Counter",
                change: StateChange::Delete,
                fence: good,
                reliable: None,
            },
            save(&a, b"3", good),
        ])
        .await
        .unwrap();
    assert_eq!(results.len(), 6);
    assert!(results[0].is_ok() && results[2].is_ok() && results[5].is_ok());
    assert!(matches!(results[1], Err(Refusal::StaleFence { .. })));
    assert_same_state(&loaded(store, "conf-e1").await.unwrap().data, b"3");
    assert_eq!(loaded(store, "conf-e2").await, None);
    assert_eq!(
        loaded(store, "conf-e3").await,
        None,
        "delete after save wins"
    );
    // An empty batch is fine.
    assert!(store.commit(&[]).await.unwrap().is_empty());
}

async fn loads_batch_in_request_order(store: &dyn ObjectStore) {
    let fence = claim(store, 7).await;
    let ids: Vec<ObjectId> = (0..300).map(|i| id(&format!("conf-batch-{i}"))).collect();
    let data: Vec<String> = (0..300).map(|i| format!("[{i}]")).collect();
    let writes: Vec<Write<'_>> = ids
        .iter()
        .zip(&data)
        .step_by(2)
        .map(|(i, d)| save(i, d.as_bytes(), fence))
        .collect();
    assert!(
        store
            .commit(&writes)
            .await
            .unwrap()
            .iter()
            .all(Result::is_ok)
    );
    let mut asked: Vec<ObjectId> = ids.iter().rev().cloned().collect();
    asked.push(id("conf-batch-0"));
    let found = store.load_many(&asked).await.unwrap();
    assert_eq!(found.len(), asked.len());
    for (asked_id, record) in asked.iter().zip(&found) {
        let n: usize = asked_id.as_str()["conf-batch-".len()..].parse().unwrap();
        match record {
            Some(r) => {
                assert_eq!(n % 2, 0, "{asked_id}");
                assert_same_state(&r.data, data[n].as_bytes());
            }
            None => assert_eq!(n % 2, 1, "{asked_id}"),
        }
    }
    assert!(store.load_many(&[]).await.unwrap().is_empty());
}

fn record(call_id: &str, object: &str, result: ReliableResult) -> ReliableCall {
    ReliableCall {
        call_id: call_id.to_owned(),
        object_id: object.to_owned(),
        object_type: "Wallet".to_owned(),
        method: "Deposit".to_owned(),
        request: vec![10, 3, 1, 2, 3],
        result,
    }
}

async fn reliable_records_commit_with_the_state(store: &dyn ObjectStore) {
    let fence = claim(store, 8).await;
    let w = id("conf-wallet");
    assert_eq!(store.reliable_call("call-1").await.unwrap(), None);
    let ok = record(
        "call-1",
        "conf-wallet",
        ReliableResult::Success(vec![1, 2, 3]),
    );
    let write = Write {
        id: &w,
        object_type: "Wallet",
        change: StateChange::Save(br#"{"balance":5}"#),
        fence,
        reliable: Some(&ok),
    };
    store.commit(&[write]).await.unwrap()[0].clone().unwrap();
    assert_eq!(store.reliable_call("call-1").await.unwrap(), Some(ok));
    assert_same_state(
        &loaded(store, "conf-wallet").await.unwrap().data,
        br#"{"balance":5}"#,
    );

    // A failed call's record, alone (the state is left as it was).
    let failed = record(
        "call-2",
        "conf-wallet",
        ReliableResult::Failed {
            code: "invalid_argument".to_owned(),
            message: "insufficient funds: balance 5, asked 9".to_owned(),
        },
    );
    let write = Write {
        id: &w,
        object_type: "Wallet",
        change: StateChange::Unchanged,
        fence,
        reliable: Some(&failed),
    };
    store.commit(&[write]).await.unwrap()[0].clone().unwrap();
    assert_eq!(store.reliable_call("call-2").await.unwrap(), Some(failed));
    assert_same_state(
        &loaded(store, "conf-wallet").await.unwrap().data,
        br#"{"balance":5}"#,
    );

    // With a stale fence neither the record nor the state is written.
    let _ = claim(store, 8).await;
    let late = record("call-3", "conf-wallet", ReliableResult::Success(vec![]));
    let write = Write {
        id: &w,
        object_type: "Wallet",
        change: StateChange::Save(br#"{"balance":99}"#),
        fence,
        reliable: Some(&late),
    };
    assert!(matches!(
        store.commit(&[write]).await.unwrap()[0],
        Err(Refusal::StaleFence { .. })
    ));
    assert_eq!(store.reliable_call("call-3").await.unwrap(), None);
    assert_same_state(
        &loaded(store, "conf-wallet").await.unwrap().data,
        br#"{"balance":5}"#,
    );
}

async fn a_taken_call_id_refuses_the_whole_write(store: &dyn ObjectStore) {
    let fence = claim(store, 9).await;
    let (x, y) = (id("conf-x"), id("conf-y"));
    let first = record("call-dup", "conf-x", ReliableResult::Success(vec![7]));
    let second = record("call-dup", "conf-y", ReliableResult::Success(vec![8]));
    let results = store
        .commit(&[
            Write {
                id: &x,
                object_type: "Wallet",
                change: StateChange::Save(b"[1]"),
                fence,
                reliable: Some(&first),
            },
            Write {
                id: &y,
                object_type: "Wallet",
                change: StateChange::Save(b"[2]"),
                fence,
                reliable: Some(&second),
            },
        ])
        .await
        .unwrap();
    assert!(results[0].is_ok());
    assert_eq!(
        results[1],
        Err(Refusal::CallIdTaken {
            call_id: "call-dup".to_owned()
        })
    );
    assert_eq!(
        loaded(store, "conf-y").await,
        None,
        "its state is not written"
    );
    assert_eq!(store.reliable_call("call-dup").await.unwrap(), Some(first));
    // Later batches see it taken as well.
    let again = Write {
        id: &y,
        object_type: "Wallet",
        change: StateChange::Save(b"[3]"),
        fence,
        reliable: Some(&second),
    };
    assert!(matches!(
        store.commit(&[again]).await.unwrap()[0],
        Err(Refusal::CallIdTaken { .. })
    ));
}

async fn old_reliable_records_are_pruned(store: &dyn ObjectStore) {
    let fence = claim(store, 10).await;
    let p = id("conf-prune");
    let rec = record("call-prune", "conf-prune", ReliableResult::Success(vec![]));
    let write = Write {
        id: &p,
        object_type: "Wallet",
        change: StateChange::Unchanged,
        fence,
        reliable: Some(&rec),
    };
    store.commit(&[write]).await.unwrap()[0].clone().unwrap();
    assert_eq!(
        store
            .prune_reliable_calls(Duration::from_secs(3600))
            .await
            .unwrap(),
        0,
        "nothing is an hour old"
    );
    assert!(store.reliable_call("call-prune").await.unwrap().is_some());
    // Records age by the store's own clock (the database's, for SQL stores), which paused
    // tokio time cannot move: let a few milliseconds pass (timestamps keep milliseconds or
    // finer in every store).
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        store
            .prune_reliable_calls(Duration::from_millis(5))
            .await
            .unwrap()
            >= 1
    );
    assert_eq!(store.reliable_call("call-prune").await.unwrap(), None);
}

async fn ids_are_opaque_strings_and_state_bytes_round_trip(store: &dyn ObjectStore) {
    for raw in [
        "shard#3/x",
        "127.0.0.1:47000/y",
        "with'quote\"s;--",
        "ünïcødé/😀",
    ] {
        let object = id(raw);
        let fence = claim(store, 11).await;
        store
            .save(&object, "T", raw.as_bytes(), fence)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(loaded(store, raw).await.unwrap().data, raw.as_bytes());
    }
    // JSON a serde type produces from any string it holds: a NUL, a lone surrogate (PostgreSQL's
    // JSONB refuses both as they are), control characters, and text that looks like the
    // wrapper the stores use for non-JSON state; then valid JSON that JSONB would change (a key
    // twice: it keeps the last) or refuse (numbers past `numeric`'s range: the save would fail
    // every time), which comes back byte for byte.
    let fence = claim(store, 12).await;
    for (n, (json, byte_for_byte)) in [
        (r#"{"messages":["hi \u0000 there"],"n":1}"#, false),
        (r#"{"text":"lone \ud800 half"}"#, false),
        (r#"["\u0001\u001f\t\\u0000 is text"]"#, false),
        (r#"{"goverse:bytes":"not base64 at all"}"#, false),
        (r#"{"a":1,"b":{"c":2,"c":3}}"#, true),
        ("[1e1000000]", true),
        (r#"{"tiny":1e-100000}"#, true),
        ("[0.5E+200000, -12]", true),
    ]
    .into_iter()
    .enumerate()
    {
        let object = id(&format!("conf-json-{n}"));
        store
            .save(&object, "T", json.as_bytes(), fence)
            .await
            .unwrap_or_else(|err| panic!("{json}: {err}"))
            .unwrap();
        let data = loaded(store, object.as_str()).await.unwrap().data;
        if byte_for_byte {
            assert_eq!(data, json.as_bytes(), "{json}");
        } else {
            assert_same_state(&data, json.as_bytes());
        }
    }
    let binary: Vec<u8> = (0..=255).collect();
    store
        .save(&id("conf-binary"), "T", &binary, fence)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded(store, "conf-binary").await.unwrap().data, binary);
    store
        .save(&id("conf-empty"), "T", b"", fence)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(loaded(store, "conf-empty").await.unwrap().data, b"");
}

async fn status_counts_what_is_stored(store: &dyn ObjectStore) {
    let status = store.status().await.unwrap();
    assert_eq!(status.schema_version, crate::SCHEMA_VERSION);
    let objects = store
        .load_many(&[id("conf-a"), id("conf-e1"), id("conf-wallet")])
        .await
        .unwrap();
    assert!(objects.iter().all(Option::is_some));
    assert!(status.objects >= 150, "{status:?}");
    assert!(status.reliable_calls >= 3, "{status:?}");
    assert!(status.claimed_shards >= 10, "{status:?}");
}
