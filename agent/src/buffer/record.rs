//! The stored form of one buffered point, shared by the buffer (writer side) and
//! the shipper (reader side).
//!
//! Each point has its own buffer id (a `u64`, increasing in append order); the store
//! keeps up to 16 consecutive points under one sled key (see `store.rs`). A point's
//! value: `created_at` (u64 BE) · partition-key length
//! (u16 BE) · partition key · the data point's JSON, exactly the Kinesis record data.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    pub id: u64,
    /// The agent's clock when the point was made (ms), for the age-of-oldest metric.
    pub created_at: u64,
    /// The point's equipment id: the default Kinesis partition key.
    pub partition_key: String,
    /// The data point JSON sent as the Kinesis record's data.
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("stored record {id} is malformed: {reason}")]
pub struct RecordDecodeError {
    pub id: u64,
    pub reason: &'static str,
}

const HEADER: usize = 8 + 2;

impl StoredRecord {
    pub fn key(id: u64) -> [u8; 8] {
        id.to_be_bytes()
    }

    pub fn encode_value(created_at: u64, partition_key: &str, data: &[u8]) -> Vec<u8> {
        let pk = partition_key.as_bytes();
        let pk_len = u16::try_from(pk.len()).unwrap_or(u16::MAX);
        let pk = &pk[..usize::from(pk_len)];
        let mut v = Vec::with_capacity(HEADER + pk.len() + data.len());
        v.extend_from_slice(&created_at.to_be_bytes());
        v.extend_from_slice(&pk_len.to_be_bytes());
        v.extend_from_slice(pk);
        v.extend_from_slice(data);
        v
    }

    pub fn decode(key: &[u8], value: &[u8]) -> Result<StoredRecord, RecordDecodeError> {
        let id = u64::from_be_bytes(key.try_into().map_err(|_| RecordDecodeError {
            id: 0,
            reason: "key is not 8 bytes",
        })?);
        let err = |reason| RecordDecodeError { id, reason };
        if value.len() < HEADER {
            return Err(err("shorter than its header"));
        }
        let created_at = u64::from_be_bytes(value[..8].try_into().expect("8 bytes"));
        let pk_len = usize::from(u16::from_be_bytes(
            value[8..10].try_into().expect("2 bytes"),
        ));
        let rest = &value[HEADER..];
        if rest.len() < pk_len {
            return Err(err("partition key runs past the end"));
        }
        let partition_key = std::str::from_utf8(&rest[..pk_len])
            .map_err(|_| err("partition key is not UTF-8"))?
            .to_owned();
        Ok(StoredRecord {
            id,
            created_at,
            partition_key,
            data: rest[pk_len..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn round_trips(id: u64, created: u64, pk in "[a-z0-9-]{0,64}", data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let v = StoredRecord::encode_value(created, &pk, &data);
            let r = StoredRecord::decode(&StoredRecord::key(id), &v).unwrap();
            prop_assert_eq!(r, StoredRecord { id, created_at: created, partition_key: pk, data });
        }

        #[test]
        fn keys_sort_in_id_order(a: u64, b: u64) {
            prop_assert_eq!(a.cmp(&b), StoredRecord::key(a).cmp(&StoredRecord::key(b)));
        }
    }

    #[test]
    fn truncated_value_is_an_error_not_a_panic() {
        let v = StoredRecord::encode_value(1, "equipment", b"{}");
        assert!(StoredRecord::decode(&StoredRecord::key(7), &v[..5]).is_err());
        assert!(StoredRecord::decode(&[1, 2], &v).is_err());
    }
}
