//! The contract every [`ClusterStore`] keeps (etcd included, later).

use std::time::Duration;

use crate::{CasOutcome, ClusterError, ClusterStore, Expect, WatchEvent};

pub(crate) async fn run_all(store: &dyn ClusterStore) {
    put_get_and_revisions(store).await;
    compare_and_set(store).await;
    prefix_listing(store).await;
    watch_resumes_from_revision(store).await;
    leases_expire_and_take_keys(store).await;
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
