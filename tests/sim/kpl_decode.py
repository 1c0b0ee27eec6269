#!/usr/bin/env python3
"""Decodes one Kinesis record in the KPL aggregated format with an implementation
independent of linewatch: AWS's `aws-kinesis-agg` package (its protobuf schema and its
deaggregator), plus the magic and MD5 checks done here with hashlib.

Usage: kpl_decode.py RECORD_FILE PARTITION_KEY
  RECORD_FILE    the record's data, raw bytes exactly as GetRecords returned them
  PARTITION_KEY  the Kinesis record's partition key

Prints one JSON object:
  magic            hex of the first 4 bytes
  md5_trailer      hex of the last 16 bytes;  md5_computed  MD5 of the bytes in between
  partition_key_table, explicit_hash_key_table   the protobuf tables
  records          [{partition_key_index, explicit_hash_key_index (or null), data_hex, tags}]
  deaggregated     what aws_kinesis_agg's deaggregator yields:
                   [{partition_key, explicit_hash_key, sub_sequence, aggregated, data_hex}]
  reencoded_hex    the library's RecordAggregator fed the deaggregated user records, in
                   order: the bytes AWS's own producer code writes for them
Exits 2 when the protobuf body does not parse.
"""
import base64
import hashlib
import json
import sys

import aws_kinesis_agg
from aws_kinesis_agg import aggregator, deaggregator, messages_pb2


def main():
    path, outer_key = sys.argv[1], sys.argv[2]
    with open(path, "rb") as f:
        data = f.read()
    magic_len = len(aws_kinesis_agg.MAGIC)
    digest_len = aws_kinesis_agg.DIGEST_SIZE
    body = data[magic_len:-digest_len]
    out = {
        "library_magic": aws_kinesis_agg.MAGIC.hex(),
        "magic": data[:magic_len].hex(),
        "md5_trailer": data[-digest_len:].hex(),
        "md5_computed": hashlib.md5(body).hexdigest(),
    }
    agg = messages_pb2.AggregatedRecord()
    try:
        agg.ParseFromString(body)
    except Exception as e:  # DecodeError, or anything the parser raises on garbage
        out["error"] = f"protobuf: {e}"
        print(json.dumps(out))
        sys.exit(2)
    out["partition_key_table"] = list(agg.partition_key_table)
    out["explicit_hash_key_table"] = list(agg.explicit_hash_key_table)
    out["records"] = [
        {
            "partition_key_index": r.partition_key_index,
            "explicit_hash_key_index": (
                r.explicit_hash_key_index if r.HasField("explicit_hash_key_index") else None
            ),
            "data_hex": r.data.hex(),
            "tags": len(r.tags),
        }
        for r in agg.records
    ]
    # The library's own path, as a Lambda consumer would use it.
    event = {
        "kinesis": {
            "kinesisSchemaVersion": "1.0",
            "sequenceNumber": "0",
            "approximateArrivalTimestamp": 0,
            "partitionKey": outer_key,
            "data": base64.b64encode(data),
        }
    }
    out["deaggregated"] = [
        {
            "partition_key": u["kinesis"]["partitionKey"],
            "explicit_hash_key": u["kinesis"].get("explicitHashKey"),
            "sub_sequence": u["kinesis"].get("subSequenceNumber"),
            "aggregated": u["kinesis"].get("aggregated", False),
            "data_hex": base64.b64decode(u["kinesis"]["data"]).hex(),
        }
        for u in deaggregator.iter_deaggregate_records(event)
    ]
    again = aggregator.RecordAggregator()
    for u in out["deaggregated"]:
        if again.add_user_record(u["partition_key"], bytes.fromhex(u["data_hex"])) is not None:
            out["reencoded_hex"] = None  # more than one record's worth: not comparable
            break
    else:
        out["reencoded_hex"] = again.clear_and_get().get_contents()[2].hex()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
