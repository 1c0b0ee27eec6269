//! The agent's Prometheus metrics, registered once and shared by every task.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

/// Every metric the agent exposes. Cloning is cheap (the metric types are `Arc`s inside).
#[derive(Clone, Default)]
pub struct Metrics {
    /// Readings taken from a source (good or bad quality).
    pub points_read: Family<SourceLabel, Counter>,
    /// Report by exception: readings sent and held back, per source (sources
    /// with no tag that reports by exception count neither).
    pub exception_passed: Family<SourceLabel, Counter>,
    pub exception_suppressed: Family<SourceLabel, Counter>,
    /// Failed reads: timeouts, lost connections, Modbus exceptions.
    pub read_errors: Family<SourceLabel, Counter>,
    /// 1 while the source is connected.
    pub source_connected: Family<SourceLabel, Gauge>,
    /// Requests a source sent to its device (S7 read-var jobs), and their summed
    /// round-trip time: rate(seconds) / rate(requests) is the mean round trip.
    pub source_requests: Family<SourceLabel, Counter>,
    pub source_request_seconds: Family<SourceLabel, Counter<f64, AtomicU64>>,
    /// The PDU size the device granted on the current connection (S7).
    pub source_pdu_bytes: Family<SourceLabel, Gauge>,
    pub buffer_records: Gauge,
    pub buffer_bytes: Gauge,
    /// Age of the oldest point not yet accepted by Kinesis, seconds (float).
    pub oldest_unshipped_age_seconds: Gauge<f64, AtomicU64>,
    pub buffer_commits: Counter,
    pub records_shipped: Counter,
    pub records_failed: Counter,
    pub records_throttled: Counter,
    pub put_records_calls: Counter,
    /// Pacing: shards paced to (0 = unpaced), the bytes/s budget in use (lowered on
    /// throttling), and the time calls waited for it.
    pub pacing_shards: Gauge,
    pub pacing_bytes_per_second: Gauge<f64, AtomicU64>,
    pub pacing_wait_seconds: Counter<f64, AtomicU64>,
    /// The backlog behind live data: records in the backfill lane, the age of its
    /// oldest, records of it Kinesis accepted (its drain rate is this counter's
    /// rate), and how often the waiting records were moved to it.
    pub backfill_records: Gauge,
    pub backfill_oldest_age_seconds: Gauge<f64, AtomicU64>,
    pub backfill_shipped: Counter,
    pub backfill_opened: Counter,
    /// Age of the oldest live record in the last call Kinesis accepted, seconds.
    pub live_delay_seconds: Gauge<f64, AtomicU64>,
    pub put_records_errors: Counter,
    /// Points lost on purpose, by reason (`overflow_drop_oldest`, `overflow_reject_new`, `oversize`, ...).
    pub dropped: Family<ReasonLabel, Counter>,
    pub dead_letters: Family<ReasonLabel, Counter>,
    /// The OPC UA sources' own (`linewatch_agent_opcua_…`).
    pub opcua: crate::sources::opcua::metrics::OpcUaMetrics,
}

impl Metrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("linewatch_agent");
        r.register(
            "points_read",
            "Readings taken from a source",
            self.points_read.clone(),
        );
        r.register(
            "exception_passed",
            "Readings a report-by-exception filter sent",
            self.exception_passed.clone(),
        );
        r.register(
            "exception_suppressed",
            "Readings a report-by-exception filter held back (unchanged within the deadband)",
            self.exception_suppressed.clone(),
        );
        r.register(
            "read_errors",
            "Failed reads per source",
            self.read_errors.clone(),
        );
        r.register(
            "source_connected",
            "1 while the source is connected",
            self.source_connected.clone(),
        );
        r.register(
            "source_requests",
            "Requests sent to a source's device",
            self.source_requests.clone(),
        );
        r.register(
            "source_request_seconds",
            "Summed round-trip time of those requests",
            self.source_request_seconds.clone(),
        );
        r.register(
            "source_pdu_bytes",
            "PDU size the device granted on the current connection",
            self.source_pdu_bytes.clone(),
        );
        r.register(
            "buffer_records",
            "Points in the disk buffer",
            self.buffer_records.clone(),
        );
        r.register(
            "buffer_bytes",
            "Bytes of points in the disk buffer",
            self.buffer_bytes.clone(),
        );
        r.register(
            "oldest_unshipped_age_seconds",
            "Age of the oldest point not yet accepted by Kinesis",
            self.oldest_unshipped_age_seconds.clone(),
        );
        r.register(
            "backfill_records",
            "Points in the backfill lane (the backlog shipped behind live data)",
            self.backfill_records.clone(),
        );
        r.register(
            "backfill_oldest_age_seconds",
            "Age of the oldest point of the backfill lane the shipper holds",
            self.backfill_oldest_age_seconds.clone(),
        );
        r.register(
            "backfill_shipped",
            "Backfill points Kinesis accepted",
            self.backfill_shipped.clone(),
        );
        r.register(
            "backfill_opened",
            "Times the waiting points were moved to the backfill lane",
            self.backfill_opened.clone(),
        );
        r.register(
            "live_delay_seconds",
            "Age of the oldest live point in the last accepted PutRecords call",
            self.live_delay_seconds.clone(),
        );
        r.register(
            "buffer_commits",
            "Group commits of the disk buffer",
            self.buffer_commits.clone(),
        );
        r.register(
            "records_shipped",
            "Records accepted by Kinesis",
            self.records_shipped.clone(),
        );
        r.register(
            "records_failed",
            "Records Kinesis refused (will be retried)",
            self.records_failed.clone(),
        );
        r.register(
            "records_throttled",
            "Records refused with ProvisionedThroughputExceeded",
            self.records_throttled.clone(),
        );
        r.register(
            "put_records_calls",
            "PutRecords calls made",
            self.put_records_calls.clone(),
        );
        r.register(
            "pacing_shards",
            "Shards the shipper paces to (1,000 records/s and 1 MiB/s each); 0 = unpaced",
            self.pacing_shards.clone(),
        );
        r.register(
            "pacing_bytes_per_second",
            "Bytes/s budget in use; below the shards' limit after throttling",
            self.pacing_bytes_per_second.clone(),
        );
        r.register(
            "pacing_wait_seconds",
            "Time PutRecords calls waited for the pacing budget",
            self.pacing_wait_seconds.clone(),
        );
        r.register(
            "put_records_errors",
            "PutRecords calls that failed as a whole",
            self.put_records_errors.clone(),
        );
        r.register("dropped", "Points dropped, by reason", self.dropped.clone());
        r.register(
            "dead_letters",
            "Records written to the dead-letter file, by reason",
            self.dead_letters.clone(),
        );
        self.opcua.register(r);
    }

    pub fn source(&self, source: &str) -> SourceLabel {
        SourceLabel {
            source: source.to_owned(),
        }
    }

    /// Count `n` points dropped for `reason`.
    pub fn count_dropped(&self, reason: &str, n: u64) {
        self.dropped
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }

    pub fn count_dead_letter(&self, reason: &str, n: u64) {
        self.dead_letters
            .get_or_create(&ReasonLabel {
                reason: reason.to_owned(),
            })
            .inc_by(n);
    }
}
