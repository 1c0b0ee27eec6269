//! The KPL aggregated record format: many user records packed into one Kinesis record.
//!
//! Layout: magic `F3 89 9A C2`, a protobuf `AggregatedRecord`, then the 16-byte MD5 of
//! the protobuf bytes. A consumer that sees the magic but a wrong MD5 (or a body too
//! short to hold one) treats the bytes as one plain record, as the KCL does: the magic
//! alone could occur in a producer's own data. Only a record that passes the MD5 check
//! and still does not decode is an error.
//!
//! ```text
//! message AggregatedRecord { repeated string partition_key_table = 1;
//!                            repeated string explicit_hash_key_table = 2;
//!                            repeated Record records = 3; }
//! message Record { required uint64 partition_key_index = 1; optional uint64 explicit_hash_key_index = 2;
//!                  required bytes data = 3; repeated Tag tags = 4; }
//! message Tag { required string key = 1; optional string value = 2; }
//! ```

use md5::{Digest, Md5};
use prost::Message;
use std::collections::HashMap;

/// The four bytes every KPL aggregated record starts with.
pub const KPL_MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
/// Length of the MD5 trailer.
pub const KPL_DIGEST_LEN: usize = 16;

/// One user record: a plain Kinesis record, or one record out of an aggregated one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Vec<u8>,
    /// Index inside the aggregated record (0 for a plain record).
    pub sub_sequence: u32,
}

/// An aggregated record that passed the MD5 check but cannot be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KplError {
    #[error("KPL aggregated record: protobuf body does not decode: {0}")]
    Protobuf(String),
    #[error(
        "KPL aggregated record: sub-record {sub_sequence} names partition key index {index}, \
         but the table has {table_len} entries"
    )]
    PartitionKeyIndex {
        sub_sequence: u32,
        index: u64,
        table_len: usize,
    },
    #[error(
        "KPL aggregated record: sub-record {sub_sequence} names explicit hash key index {index}, \
         but the table has {table_len} entries"
    )]
    ExplicitHashKeyIndex {
        sub_sequence: u32,
        index: u64,
        table_len: usize,
    },
    #[error("KPL aggregated record: {0} sub-records, more than a sub-sequence number can count")]
    TooManyRecords(usize),
}

#[derive(Clone, PartialEq, Message)]
struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    records: Vec<Record>,
}

#[derive(Clone, PartialEq, Message)]
struct Record {
    #[prost(uint64, required, tag = "1")]
    partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "vec", required, tag = "3")]
    data: Vec<u8>,
    #[prost(message, repeated, tag = "4")]
    tags: Vec<Tag>,
}

#[derive(Clone, PartialEq, Message)]
struct Tag {
    #[prost(string, required, tag = "1")]
    key: String,
    #[prost(string, optional, tag = "2")]
    value: Option<String>,
}

/// True when `data` starts with the KPL magic (it may still turn out to be a plain record).
pub fn has_magic(data: &[u8]) -> bool {
    data.starts_with(&KPL_MAGIC)
}

/// The user records inside one Kinesis record.
///
/// * no magic, too short, or a wrong MD5: one record, the raw bytes under `outer_partition_key`;
/// * a valid aggregated record: its sub-records in order, `sub_sequence` 0, 1, ...;
/// * magic and a good MD5 but an undecodable body or an index outside a table: an error.
pub fn deaggregate(data: &[u8], outer_partition_key: &str) -> Result<Vec<UserRecord>, KplError> {
    let plain = || {
        vec![UserRecord {
            partition_key: outer_partition_key.to_owned(),
            explicit_hash_key: None,
            data: data.to_vec(),
            sub_sequence: 0,
        }]
    };
    if !has_magic(data) || data.len() < KPL_MAGIC.len() + KPL_DIGEST_LEN {
        return Ok(plain());
    }
    let (body, digest) =
        data[KPL_MAGIC.len()..].split_at(data.len() - KPL_MAGIC.len() - KPL_DIGEST_LEN);
    if Md5::digest(body).as_slice() != digest {
        return Ok(plain());
    }
    let agg = AggregatedRecord::decode(body).map_err(|e| KplError::Protobuf(e.to_string()))?;
    if agg.records.len() > u32::MAX as usize {
        return Err(KplError::TooManyRecords(agg.records.len()));
    }
    let mut out = Vec::with_capacity(agg.records.len());
    for (i, r) in agg.records.into_iter().enumerate() {
        let sub_sequence = i as u32;
        let partition_key = usize::try_from(r.partition_key_index)
            .ok()
            .and_then(|i| agg.partition_key_table.get(i))
            .ok_or(KplError::PartitionKeyIndex {
                sub_sequence,
                index: r.partition_key_index,
                table_len: agg.partition_key_table.len(),
            })?
            .clone();
        let explicit_hash_key = match r.explicit_hash_key_index {
            None => None,
            Some(index) => Some(
                usize::try_from(index)
                    .ok()
                    .and_then(|i| agg.explicit_hash_key_table.get(i))
                    .ok_or(KplError::ExplicitHashKeyIndex {
                        sub_sequence,
                        index,
                        table_len: agg.explicit_hash_key_table.len(),
                    })?
                    .clone(),
            ),
        };
        out.push(UserRecord {
            partition_key,
            explicit_hash_key,
            data: r.data,
            sub_sequence,
        });
    }
    Ok(out)
}

/// Bytes of a protobuf varint holding `v`.
fn varint_len(v: u64) -> usize {
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

/// Bytes of one length-delimited field of `len` bytes (tag + length + payload).
fn field_len(len: usize) -> usize {
    1 + varint_len(len as u64) + len
}

/// Exact size of the aggregated record [`aggregate`] builds for sub-records of
/// `data_lens` bytes, all under one partition key of `key_len` bytes (index 0) and no
/// explicit hash key: what a producer needs to stay under the 1 MiB record limit
/// without encoding first. `sub_record_len` is one record's share.
pub fn single_key_size(key_len: usize, data_lens: impl IntoIterator<Item = usize>) -> usize {
    KPL_MAGIC.len()
        + field_len(key_len)
        + data_lens.into_iter().map(sub_record_len).sum::<usize>()
        + KPL_DIGEST_LEN
}

/// Bytes one sub-record of `data_len` bytes adds to an aggregated record whose
/// partition key has index 0: `records` field around `{partition_key_index: 0, data}`.
pub fn sub_record_len(data_len: usize) -> usize {
    // partition_key_index = 0 is written (required field): tag + one varint byte.
    field_len(2 + field_len(data_len))
}

/// Packs `(partition key, explicit hash key, data)` records into one KPL aggregated
/// record (keys are stored once each in the tables). The caller keeps the result under
/// Kinesis' 1 MiB record limit; the outer partition key is the caller's choice too
/// (the KPL uses the first record's).
pub fn aggregate(records: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    // Key → its index in `table`: an agent may pack thousands of points per record.
    fn index_of<'a>(
        seen: &mut HashMap<&'a str, u64>,
        table: &mut Vec<String>,
        key: &'a str,
    ) -> u64 {
        *seen.entry(key).or_insert_with(|| {
            table.push(key.to_owned());
            (table.len() - 1) as u64
        })
    }
    let mut agg = AggregatedRecord {
        partition_key_table: Vec::new(),
        explicit_hash_key_table: Vec::new(),
        records: Vec::with_capacity(records.len()),
    };
    let (mut pks, mut ehks) = (HashMap::new(), HashMap::new());
    for (pk, ehk, data) in records {
        let partition_key_index = index_of(&mut pks, &mut agg.partition_key_table, pk);
        let explicit_hash_key_index =
            ehk.map(|e| index_of(&mut ehks, &mut agg.explicit_hash_key_table, e));
        agg.records.push(Record {
            partition_key_index,
            explicit_hash_key_index,
            data: data.to_vec(),
            tags: Vec::new(),
        });
    }
    frame(&agg.encode_to_vec())
}

/// Magic + `body` + MD5 of `body`: an aggregated record around an already encoded
/// protobuf body (tests use it to build records that pass the MD5 check but are bad).
pub fn frame(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(KPL_MAGIC.len() + body.len() + KPL_DIGEST_LEN);
    out.extend_from_slice(&KPL_MAGIC);
    out.extend_from_slice(body);
    out.extend_from_slice(Md5::digest(body).as_slice());
    out
}
