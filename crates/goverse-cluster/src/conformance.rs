//! The contract every [`ClusterStore`] keeps: run against the in-memory store and a real etcd.

use std::time::Duration;

use crate::{
    CasOutcome, ClusterError, ClusterStore, Expect, MAX_TXN_OPS, TxnOp, TxnOutcome, TxnWrite,
    WatchEvent,
};

pub(crate) async fn run_all(store: &dyn ClusterStore) {
    put_get_and_revisions(store).await;
    compare_and_set(store).await;
    prefix_listing(store).await;
    transactions_apply_whole_or_not_at_all(store).await;
    watch_resumes_from_revision(store).await;
    leases_expire_and_take_keys(store).await;
}

fn put(key: &str, value: &str, expect: Option<Expect>) -> TxnWrite {
    TxnWrite {
        key: key.to_owned(),
        expect,
        op: TxnOp::Put {
            value: value.as_bytes().to_vec(),
            lease: None,
        },
    }
}

async fn transactions_apply_whole_or_not_at_all(store: &dyn ClusterStore) {
    let (_, before) = store.get_prefix("/txn/").await.unwrap();
    let mut watch = store.watch_prefix("/txn/", before).await.unwrap();
    let writes = [
        put("/txn/a", "1", Some(Expect::Absent)),
        put("/txn/b", "1", Some(Expect::Absent)),
        put("/txn/c", "1", None),
    ];
    let TxnOutcome::Applied(rev) = store.transact(&writes).await.unwrap() else {
        panic!("a batch of fresh keys must apply");
    };
    let (kvs, _) = store.get_prefix("/txn/").await.unwrap();
    assert_eq!(kvs.len(), 3);
    assert!(kvs.iter().all(|kv| kv.mod_revision == rev), "one revision");
    for _ in 0..3 {
        let event = watch.recv().await.unwrap();
        assert_eq!(event.revision(), rev);
    }

    // One stale expectation: nothing is written, and the current values come back.
    let b = store.get("/txn/b").await.unwrap().unwrap();
    let writes = [
        put("/txn/b", "2", Some(Expect::ModRevision(b.mod_revision))),
        put("/txn/a", "2", Some(Expect::Absent)),
        TxnWrite {
            key: "/txn/c".to_owned(),
            expect: None,
            op: TxnOp::Delete,
        },
    ];
    let TxnOutcome::Conflict(current) = store.transact(&writes).await.unwrap() else {
        panic!("an expectation failed: nothing may apply");
    };
    assert_eq!(current.len(), 3);
    assert_eq!(current[0].as_ref().unwrap().value, b"1");
    assert_eq!(current[1].as_ref().unwrap().key, "/txn/a");
    assert_eq!(store.get("/txn/b").await.unwrap().unwrap().value, b"1");
    assert!(
        store.get("/txn/c").await.unwrap().is_some(),
        "delete not applied"
    );

    // Fixed: the batch applies, the delete included.
    let a = store.get("/txn/a").await.unwrap().unwrap();
    let writes = [
        put("/txn/b", "2", Some(Expect::ModRevision(b.mod_revision))),
        put("/txn/a", "2", Some(Expect::ModRevision(a.mod_revision))),
        TxnWrite {
            key: "/txn/c".to_owned(),
            expect: None,
            op: TxnOp::Delete,
        },
    ];
    assert!(matches!(
        store.transact(&writes).await.unwrap(),
        TxnOutcome::Applied(r) if r > rev
    ));
    assert_eq!(store.get("/txn/a").await.unwrap().unwrap().value, b"2");
    assert_eq!(store.get("/txn/c").await.unwrap(), None);

    // The largest batch allowed applies; one more write, or a key written twice, is refused.
    let big: Vec<TxnWrite> = (0..MAX_TXN_OPS)
        .map(|i| put(&format!("/txn/big/{i:03}"), "x", Some(Expect::Absent)))
        .collect();
    assert!(matches!(
        store.transact(&big).await.unwrap(),
        TxnOutcome::Applied(_)
    ));
    let mut too_big = big.clone();
    too_big.push(put("/txn/big/one-more", "x", None));
    assert!(matches!(
        store.transact(&too_big).await,
        Err(ClusterError::Rejected(_))
    ));
    let twice = [put("/txn/d", "1", None), put("/txn/d", "2", None)];
    assert!(matches!(
        store.transact(&twice).await,
        Err(ClusterError::Rejected(ref text)) if text.contains("/txn/d")
    ));
}

async fn put_get_and_revisions(store: &dyn ClusterStore) {
    let r1 = store.put("/t/a", b"1".to_vec(), None).await.unwrap();
    let r2 = store.put("/t/a", b"2".to_vec(), None).await.unwrap();
    assert!(r2 > r1);
    let kv = store.get("/t/a").await.unwrap().unwrap();
    assert_eq!(
        (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
        (&b"2"[..], r1, r2)
    );
    assert!(store.delete("/t/a").await.unwrap());
    assert!(!store.delete("/t/a").await.unwrap());
    assert_eq!(store.get("/t/a").await.unwrap(), None);
}

async fn compare_and_set(store: &dyn ClusterStore) {
    let CasOutcome::Applied(rev) = store
        .compare_and_set("/cas/k", Expect::Absent, b"a".to_vec(), None)
        .await
        .unwrap()
    else {
        panic!("first create must apply");
    };
    let again = store
        .compare_and_set("/cas/k", Expect::Absent, b"b".to_vec(), None)
        .await
        .unwrap();
    assert!(matches!(again, CasOutcome::Conflict(Some(ref kv)) if kv.value == b"a"));
    let stale = store
        .compare_and_set("/cas/k", Expect::ModRevision(rev - 1), b"c".to_vec(), None)
        .await
        .unwrap();
    assert!(matches!(stale, CasOutcome::Conflict(_)));
    let ok = store
        .compare_and_set("/cas/k", Expect::ModRevision(rev), b"d".to_vec(), None)
        .await
        .unwrap();
    assert!(matches!(ok, CasOutcome::Applied(r) if r > rev));
    assert_eq!(store.get("/cas/k").await.unwrap().unwrap().value, b"d");
}

async fn prefix_listing(store: &dyn ClusterStore) {
    for k in ["/p/b", "/p/a", "/p/c", "/q/a"] {
        store.put(k, k.as_bytes().to_vec(), None).await.unwrap();
    }
    let (kvs, rev) = store.get_prefix("/p/").await.unwrap();
    let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/p/a", "/p/b", "/p/c"]);
    assert!(kvs.iter().all(|kv| kv.mod_revision <= rev));
}

async fn watch_resumes_from_revision(store: &dyn ClusterStore) {
    let (_, rev) = store.get_prefix("/w/").await.unwrap();
    store.put("/w/1", b"x".to_vec(), None).await.unwrap();
    // Started after the write, from the earlier revision: the write is replayed.
    let mut watch = store.watch_prefix("/w/", rev).await.unwrap();
    store.put("/other", b"y".to_vec(), None).await.unwrap();
    store.delete("/w/1").await.unwrap();
    let first = watch.recv().await.unwrap();
    assert!(matches!(first, WatchEvent::Put(ref kv) if kv.key == "/w/1"));
    let second = watch.recv().await.unwrap();
    assert!(matches!(second, WatchEvent::Delete { ref key, .. } if key == "/w/1"));
    assert!(second.revision() > first.revision());
}

async fn leases_expire_and_take_keys(store: &dyn ClusterStore) {
    let lease = store.grant_lease(Duration::from_secs(2)).await.unwrap();
    store
        .put("/l/node", b"up".to_vec(), Some(lease))
        .await
        .unwrap();
    let (_, rev) = store.get_prefix("/l/").await.unwrap();
    let mut watch = store.watch_prefix("/l/", rev).await.unwrap();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        store.keep_alive(lease).await.unwrap();
    }
    assert!(store.get("/l/node").await.unwrap().is_some(), "kept alive");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(store.get("/l/node").await.unwrap(), None, "expired");
    assert!(matches!(
        watch.recv().await.unwrap(),
        WatchEvent::Delete { .. }
    ));
    assert_eq!(
        store.keep_alive(lease).await,
        Err(ClusterError::LeaseExpired(lease.0))
    );
    let err = store
        .put("/l/late", b"x".to_vec(), Some(lease))
        .await
        .unwrap_err();
    assert_eq!(err, ClusterError::LeaseExpired(lease.0));

    let lease = store.grant_lease(Duration::from_secs(10)).await.unwrap();
    store
        .put("/l/n2", b"up".to_vec(), Some(lease))
        .await
        .unwrap();
    store.revoke_lease(lease).await.unwrap();
    assert_eq!(store.get("/l/n2").await.unwrap(), None, "revoked");
}
