//! KPL aggregated records: golden bytes, round trips, and the KCL's fallbacks.

use linewatch_schemas::kpl::{aggregate, deaggregate, KplError, UserRecord, KPL_MAGIC};
use proptest::prelude::*;

/// Built by hand from the .proto (and the MD5 computed with Python's hashlib), not by
/// this crate: partition keys ["a", "b"], explicit hash keys ["x"], records
/// {pk 0, "hi"} and {pk 1, ehk 0, "there"}.
const GOLDEN_BODY: &str = "0a01610a01621201781a0608001a0268691a0b080110001a057468657265";
const GOLDEN_MD5: &str = "0469ddede2dc6a4734fb017e92e7536d";

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn golden() -> Vec<u8> {
    let mut v = KPL_MAGIC.to_vec();
    v.extend(unhex(GOLDEN_BODY));
    v.extend(unhex(GOLDEN_MD5));
    v
}

fn with_md5(body: &[u8]) -> Vec<u8> {
    use md5::{Digest, Md5};
    let mut v = KPL_MAGIC.to_vec();
    v.extend_from_slice(body);
    v.extend_from_slice(Md5::digest(body).as_slice());
    v
}

#[test]
fn golden_vector_decodes() {
    let recs = deaggregate(&golden(), "outer").unwrap();
    assert_eq!(
        recs,
        vec![
            UserRecord {
                partition_key: "a".into(),
                explicit_hash_key: None,
                data: b"hi".to_vec(),
                sub_sequence: 0,
            },
            UserRecord {
                partition_key: "b".into(),
                explicit_hash_key: Some("x".into()),
                data: b"there".to_vec(),
                sub_sequence: 1,
            },
        ]
    );
}

#[test]
fn aggregate_writes_the_golden_bytes() {
    let out = aggregate(&[("a", None, b"hi"), ("b", Some("x"), b"there")]);
    assert_eq!(out, golden());
}

#[test]
fn plain_record_is_one_user_record() {
    let recs = deaggregate(br#"{"version":1}"#, "pk-1").unwrap();
    assert_eq!(
        recs,
        vec![UserRecord {
            partition_key: "pk-1".into(),
            explicit_hash_key: None,
            data: br#"{"version":1}"#.to_vec(),
            sub_sequence: 0,
        }]
    );
    // Empty data is a (plain) record too.
    assert_eq!(deaggregate(b"", "k").unwrap()[0].data, b"");
}

#[test]
fn bad_md5_is_treated_as_a_plain_record() {
    let mut data = golden();
    let last = data.len() - 1;
    data[last] ^= 0x01;
    let recs = deaggregate(&data, "outer").unwrap();
    assert_eq!(recs.len(), 1);
    assert_eq!(recs[0].partition_key, "outer");
    assert_eq!(recs[0].data, data);
}

#[test]
fn truncated_records_are_treated_as_plain() {
    let data = golden();
    // Magic plus less than a digest; and a body cut short (MD5 no longer matches).
    for len in [4, 10, 19, data.len() - 1] {
        let recs = deaggregate(&data[..len], "outer").unwrap();
        assert_eq!(recs.len(), 1, "len {len}");
        assert_eq!(recs[0].data, &data[..len]);
    }
}

#[test]
fn good_md5_but_bad_protobuf_is_an_error() {
    // Field 3 claims 100 bytes but there are 2.
    let err = deaggregate(&with_md5(&[0x1a, 0x64, 0x08, 0x00]), "k").unwrap_err();
    assert!(matches!(err, KplError::Protobuf(_)), "{err:?}");
    assert!(err.to_string().contains("protobuf"), "{err}");
}

#[test]
fn partition_key_index_out_of_range_is_an_error() {
    // Table ["a"], record names index 3.
    let body = unhex("0a01611a0608031a026869");
    let err = deaggregate(&with_md5(&body), "k").unwrap_err();
    assert_eq!(
        err,
        KplError::PartitionKeyIndex {
            sub_sequence: 0,
            index: 3,
            table_len: 1
        }
    );
    assert!(err.to_string().contains("partition key index 3"), "{err}");
}

#[test]
fn explicit_hash_key_index_out_of_range_is_an_error() {
    // Table ["a"], no hash keys, record names hash key index 0.
    let body = unhex("0a01611a08080010001a026869");
    let err = deaggregate(&with_md5(&body), "k").unwrap_err();
    assert_eq!(
        err,
        KplError::ExplicitHashKeyIndex {
            sub_sequence: 0,
            index: 0,
            table_len: 0
        }
    );
}

#[test]
fn empty_aggregate_has_no_records() {
    assert_eq!(deaggregate(&aggregate(&[]), "k").unwrap(), vec![]);
}

proptest! {
    /// The size a producer computes up front is the size `aggregate` builds.
    #[test]
    fn single_key_size_is_exact(
        key in "[a-z0-9-]{1,300}",
        lens in proptest::collection::vec(0usize..70_000, 0..20),
    ) {
        let datas: Vec<Vec<u8>> = lens.iter().map(|&n| vec![b'x'; n]).collect();
        let refs: Vec<(&str, Option<&str>, &[u8])> =
            datas.iter().map(|d| (key.as_str(), None, d.as_slice())).collect();
        let built = if refs.is_empty() { 0 } else { aggregate(&refs).len() };
        let expected = if refs.is_empty() { 0 } else {
            linewatch_schemas::kpl::single_key_size(key.len(), lens.iter().copied())
        };
        prop_assert_eq!(built, expected);
    }

    #[test]
    fn round_trip(records in proptest::collection::vec(
        ("[a-z0-9]{1,8}", proptest::option::of("[0-9]{1,38}"), proptest::collection::vec(any::<u8>(), 0..64)),
        0..40,
    )) {
        let refs: Vec<(&str, Option<&str>, &[u8])> = records
            .iter()
            .map(|(pk, ehk, d)| (pk.as_str(), ehk.as_deref(), d.as_slice()))
            .collect();
        let packed = aggregate(&refs);
        let out = deaggregate(&packed, "outer").unwrap();
        prop_assert_eq!(out.len(), records.len());
        for (i, (u, (pk, ehk, d))) in out.iter().zip(&records).enumerate() {
            prop_assert_eq!(&u.partition_key, pk);
            prop_assert_eq!(&u.explicit_hash_key, ehk);
            prop_assert_eq!(&u.data, d);
            prop_assert_eq!(u.sub_sequence, i as u32);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..200)) {
        let mut with_magic = KPL_MAGIC.to_vec();
        with_magic.extend(&data);
        for d in [&data, &with_magic] {
            if let Ok(recs) = deaggregate(d, "k") {
                prop_assert!(!recs.is_empty() || d.len() >= 20);
            }
        }
    }
}
