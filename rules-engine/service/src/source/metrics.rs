//! The Kinesis source's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `GetRecords`, `GetShardIterator`, `ListShards`.
    pub operation: String,
    /// `throttled`, `expired_iterator`, `not_found`, `network`, `service`, `other`.
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: String,
}

/// Every metric of the source. Cloning is cheap (the metric types are `Arc`s inside).
#[derive(Clone, Debug, Default)]
pub struct SourceMetrics {
    /// User records delivered (after de-aggregation).
    pub records: Counter,
    /// Kinesis records read (an aggregated record counts once).
    pub kinesis_records: Counter,
    /// Batches delivered (including empty "shard finished" batches).
    pub batches: Counter,
    /// Failed Kinesis calls by operation and kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// Throttled calls (ProvisionedThroughputExceeded, LimitExceeded, KMS throttling).
    pub throttles: Family<OperationLabel, Counter>,
    /// Records with the KPL magic and a good MD5 that did not decode (delivered raw).
    pub kpl_errors: Counter,
    /// Kinesis records that yield no user record (a KPL aggregate of zero records),
    /// handed on to be dead-lettered.
    pub poisoned_records: Counter,
    /// Checkpointed positions the stream rejected (`kinesis.on_invalid_position` applied).
    pub invalid_positions: Counter,
    /// MillisBehindLatest of the last GetRecords, per shard being read.
    pub millis_behind_latest: Family<ShardLabel, Gauge>,
    /// Shards being read (holding an iterator).
    pub open_shards: Gauge,
}

impl SourceMetrics {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers every family as `linewatch_rules_kinesis_*` (pass the root registry).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("linewatch_rules_kinesis");
        r.register(
            "records",
            "User records delivered (after KPL de-aggregation)",
            self.records.clone(),
        );
        r.register(
            "kinesis_records",
            "Kinesis records read (an aggregated record counts once)",
            self.kinesis_records.clone(),
        );
        r.register(
            "batches",
            "Batches delivered to the engine",
            self.batches.clone(),
        );
        r.register(
            "errors",
            "Failed Kinesis calls by operation and kind",
            self.errors.clone(),
        );
        r.register(
            "throttles",
            "Throttled Kinesis calls by operation",
            self.throttles.clone(),
        );
        r.register(
            "kpl_errors",
            "KPL aggregated records that did not decode (delivered as one raw record)",
            self.kpl_errors.clone(),
        );
        r.register(
            "poisoned_records",
            "Kinesis records that yield no user record (dead-lettered, reading goes on)",
            self.poisoned_records.clone(),
        );
        r.register(
            "invalid_positions",
            "Checkpointed shard positions the stream rejected (e.g. a recreated stream)",
            self.invalid_positions.clone(),
        );
        r.register(
            "millis_behind_latest",
            "MillisBehindLatest of the last GetRecords per shard",
            self.millis_behind_latest.clone(),
        );
        r.register("open_shards", "Shards being read", self.open_shards.clone());
    }

    pub(crate) fn error(&self, operation: &str, kind: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                operation: operation.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub(crate) fn throttled(&self, operation: &str) {
        self.throttles
            .get_or_create(&OperationLabel {
                operation: operation.to_owned(),
            })
            .inc();
    }
}
