//! UUID v4 task ids and delivery tags, from the OS's random source like Python's
//! `uuid.uuid4()`, fetched 64 at a time: one `getrandom` call per id would cost more than the
//! rest of encoding a message.

use std::cell::RefCell;

const BATCH: usize = 64;

struct Pool {
    bytes: [u8; 16 * BATCH],
    next: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = const {
        RefCell::new(Pool {
            bytes: [0; 16 * BATCH],
            next: BATCH,
        })
    };
}

/// A fresh UUID v4, hyphenated and lower-case (`1d3c0778-fdde-4dd6-a36e-223c8d657eeb`).
pub(crate) fn new_uuid4() -> String {
    let uuid = POOL
        .try_with(|pool| {
            let mut pool = pool.try_borrow_mut().ok()?;
            if pool.next == BATCH {
                getrandom::fill(&mut pool.bytes).ok()?;
                pool.next = 0;
            }
            let start = pool.next * 16;
            pool.next += 1;
            let mut bytes = [0u8; 16];
            bytes.copy_from_slice(&pool.bytes[start..start + 16]);
            // Each id is handed out once.
            pool.bytes[start..start + 16].fill(0);
            Some(uuid::Builder::from_random_bytes(bytes).into_uuid())
        })
        .ok()
        .flatten()
        .unwrap_or_else(uuid::Uuid::new_v4);
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid.hyphenated().encode_lower(&mut text).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_version_4_uuids() {
        let ids: std::collections::HashSet<String> = (0..1000).map(|_| new_uuid4()).collect();
        assert_eq!(ids.len(), 1000);
        for id in ids {
            let uuid = uuid::Uuid::parse_str(&id).unwrap();
            assert_eq!(uuid.get_version_num(), 4);
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
            assert_eq!(id, uuid.hyphenated().to_string());
        }
    }
}
