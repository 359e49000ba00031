//! The contract every [`ObjectStore`] keeps. Each implementation's tests call [`run_all`].

use goverse_core::ObjectId;

use crate::{ObjectStore, SaveRequest, StoreError};

fn req<'a>(id: &'a ObjectId, ty: &'a str, data: &'a [u8], epoch: u64) -> SaveRequest<'a> {
    SaveRequest {
        id,
        object_type: ty,
        data,
        epoch,
    }
}

pub(crate) async fn run_all(store: &dyn ObjectStore) {
    missing_object_loads_as_none(store).await;
    save_then_load_round_trips(store).await;
    newer_or_equal_epoch_overwrites(store).await;
    stale_epoch_is_refused_and_keeps_data(store).await;
    delete_is_fenced_and_idempotent(store).await;
    batch_saves_fence_each_record(store).await;
    ids_are_opaque_strings(store).await;
}

async fn missing_object_loads_as_none(store: &dyn ObjectStore) {
    assert_eq!(
        store.load(&ObjectId::from("conf-missing")).await.unwrap(),
        None
    );
}

async fn save_then_load_round_trips(store: &dyn ObjectStore) {
    let id = ObjectId::from("conf-a");
    store
        .save(req(&id, "Counter", br#"{"value":1}"#, 1))
        .await
        .unwrap();
    let got = store.load(&id).await.unwrap().unwrap();
    assert_eq!(got.object_type, "Counter");
    assert_eq!(got.data, br#"{"value":1}"#);
    assert_eq!(got.epoch, 1);
}

async fn newer_or_equal_epoch_overwrites(store: &dyn ObjectStore) {
    let id = ObjectId::from("conf-b");
    store.save(req(&id, "Counter", b"1", 3)).await.unwrap();
    store.save(req(&id, "Counter", b"2", 3)).await.unwrap();
    assert_eq!(store.load(&id).await.unwrap().unwrap().data, b"2");
    store.save(req(&id, "Counter", b"3", 4)).await.unwrap();
    let got = store.load(&id).await.unwrap().unwrap();
    assert_eq!((got.data.as_slice(), got.epoch), (&b"3"[..], 4));
}

async fn stale_epoch_is_refused_and_keeps_data(store: &dyn ObjectStore) {
    let id = ObjectId::from("conf-c");
    store.save(req(&id, "Counter", b"new", 5)).await.unwrap();
    let err = store
        .save(req(&id, "Counter", b"old", 4))
        .await
        .unwrap_err();
    assert_eq!(
        err,
        StoreError::StaleEpoch {
            id: "conf-c".into(),
            stored: 5,
            given: 4
        }
    );
    assert_eq!(store.load(&id).await.unwrap().unwrap().data, b"new");
}

async fn delete_is_fenced_and_idempotent(store: &dyn ObjectStore) {
    let id = ObjectId::from("conf-d");
    store.save(req(&id, "Counter", b"x", 7)).await.unwrap();
    assert!(matches!(
        store.delete(&id, 6).await,
        Err(StoreError::StaleEpoch {
            stored: 7,
            given: 6,
            ..
        })
    ));
    assert!(store.load(&id).await.unwrap().is_some());
    assert!(store.delete(&id, 7).await.unwrap());
    assert!(!store.delete(&id, 7).await.unwrap());
    assert_eq!(store.load(&id).await.unwrap(), None);
}

async fn batch_saves_fence_each_record(store: &dyn ObjectStore) {
    let (a, b) = (ObjectId::from("conf-e1"), ObjectId::from("conf-e2"));
    store.save(req(&b, "T", b"keep", 9)).await.unwrap();
    let before = store.count().await.unwrap();
    let results = store
        .save_batch(&[req(&a, "T", b"a", 1), req(&b, "T", b"lose", 8)])
        .await;
    assert_eq!(results.len(), 2);
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(StoreError::StaleEpoch { .. })));
    assert_eq!(store.load(&a).await.unwrap().unwrap().data, b"a");
    assert_eq!(store.load(&b).await.unwrap().unwrap().data, b"keep");
    assert_eq!(store.count().await.unwrap(), before + 1);
}

async fn ids_are_opaque_strings(store: &dyn ObjectStore) {
    for raw in [
        "shard#3/x",
        "127.0.0.1:47000/y",
        "with'quote\"s",
        "ünïcødé/😀",
    ] {
        let id = ObjectId::from(raw);
        store.save(req(&id, "T", raw.as_bytes(), 1)).await.unwrap();
        assert_eq!(store.load(&id).await.unwrap().unwrap().data, raw.as_bytes());
    }
}
