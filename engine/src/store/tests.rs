//! Opening refuses what is not a whole data directory, and a failed write poisons the store.

use super::*;

fn init(batch: &mut StoreBatch) {
    batch.put(Cf::Meta, FORMAT_KEY, b"test");
}

#[test]
fn write_after_a_failed_write_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, fresh) = Store::open(dir.path(), init).expect("open");
    assert!(fresh);
    let mut batch = StoreBatch::default();
    batch.put(Cf::Payers, b"a", b"1");
    store.write(batch).expect("first write");

    store.fail_next_write();
    let mut batch = StoreBatch::default();
    batch.put(Cf::Payers, b"b", b"2");
    assert!(matches!(
        store.write(batch),
        Err(StoreError::Poisoned { .. })
    ));
    assert!(store.is_poisoned());

    // A perfectly good write is refused from now on, and nothing reaches the disk.
    let mut batch = StoreBatch::default();
    batch.put(Cf::Payers, b"c", b"3");
    assert!(matches!(
        store.write(batch),
        Err(StoreError::Poisoned { .. })
    ));
    assert_eq!(store.get(Cf::Payers, b"c").expect("read"), None);
    assert_eq!(
        store.get(Cf::Payers, b"a").expect("read"),
        Some(b"1".to_vec())
    );
}

#[test]
fn non_empty_dir_without_current_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("MANIFEST-000001"), b"half").expect("write");
    let error = Store::open(dir.path(), init).expect_err("must refuse");
    assert!(matches!(error, StoreError::NotADatabase { .. }), "{error}");
    assert!(error.to_string().contains("CURRENT"));
}

#[test]
fn database_without_format_marker_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(dir.path(), |_| {}).expect("create");
    drop(store);
    let error = Store::open(dir.path(), init).expect_err("must refuse");
    assert!(matches!(error, StoreError::Format { .. }), "{error}");
}

#[test]
fn scan_respects_prefix_cursor_and_limit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, _) = Store::open(dir.path(), init).expect("open");
    let mut batch = StoreBatch::default();
    for key in [&b"a1"[..], b"a2", b"a3", b"b1"] {
        batch.put(Cf::Channels, key, key);
    }
    store.write(batch).expect("write");
    let snapshot = store.snapshot();
    let keys = |after: Option<&[u8]>, limit| {
        snapshot
            .scan(Cf::Channels, b"a", after, limit)
            .expect("scan")
            .into_iter()
            .map(|(k, _)| k.to_vec())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        keys(None, 10),
        vec![b"a1".to_vec(), b"a2".to_vec(), b"a3".to_vec()]
    );
    assert_eq!(keys(Some(b"a1"), 1), vec![b"a2".to_vec()]);
}
