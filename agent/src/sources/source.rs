//! What a protocol implements ([`Source`]) and what every source is given
//! ([`SourceContext`]). The life-cycle around it (connect, backoff, flags,
//! heartbeats, status) is [`super::driver`]'s.

use super::exception::ExceptionConfig;
use super::status::SourceStatus;
use super::value_map::ValueMap;
use crate::telemetry::metrics::Metrics;
use linewatch_runtime::clock::SharedClock;
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_schemas::{Quality, Value};
use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

use super::ReadingBatch;

/// One protocol's side of a source: open a link, wait for and read one cycle,
/// close. Everything else — reconnecting with backoff, `Fst`/`Syn`/`Wmk`/`Lst`,
/// building [`super::Reading`]s, metrics, `/healthz` status — is done for it.
///
/// Static dispatch: the driver is generic over `S: Source` (async trait methods
/// are not object-safe without boxing every call); the one dynamic step is the
/// protocol factory ([`super::config::ProtocolConfig::start`]), which hands back
/// the driver's future boxed, once per source.
pub trait Source: Send + 'static {
    /// An open connection (or session) and whatever lives as long as it (e.g. poll timers).
    type Link: Send;
    /// What [`Source::next_cycle`] found due, e.g. which poll group.
    type Due: Send;
    /// Why the link is down; its text becomes the `rawQuality` of the `Syn` points.
    type Error: std::error::Error + Send + Sync + 'static;

    /// The source's id and tags; readings name a tag by its index in this list.
    fn identity(&self) -> &SourceIdentity;

    /// Open the link. Must give up on its own within the source's `timeout`.
    fn connect(&mut self) -> impl Future<Output = Result<Self::Link, Self::Error>> + Send;

    /// Wait until the next cycle is due (a poll interval ticked, subscription data
    /// arrived). Must be cancel-safe: the driver races it against the heartbeat
    /// timer and shutdown.
    fn next_cycle(&mut self, link: &mut Self::Link) -> impl Future<Output = Self::Due> + Send;

    /// Read one cycle into `out`. Runs to completion (it is not cancelled), so it
    /// should check [`Cycle::stopping`] between requests. `Err` means the link is
    /// lost: what is already in `out` is still sent, then the driver reconnects.
    fn read(
        &mut self,
        link: &mut Self::Link,
        due: Self::Due,
        out: &mut Cycle<'_>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;

    /// Close the link politely; the driver bounds this by the source's `timeout`.
    fn close(&mut self, link: Self::Link) -> impl Future<Output = ()> + Send;
}

/// Who a source is, for the readings the driver builds.
#[derive(Debug, Clone)]
pub struct SourceIdentity {
    /// `meta.sourceId` of every point.
    pub id: Arc<str>,
    /// The protocol, for logs (`modbus`).
    pub kind: &'static str,
    /// Every tag of the source, in a fixed order (the index readings use).
    pub tags: Vec<SourceTag>,
    /// Longest time between two cycles when all is well (the slowest poll
    /// interval, a subscription's publishing interval): part of the staleness rule.
    pub cycle_period: Duration,
}

/// One shared copy of each equipment id while a source builds its tag table:
/// thousands of tags share a few equipments.
#[derive(Debug, Default)]
pub struct EquipmentIds(HashSet<Arc<str>>);

impl EquipmentIds {
    /// The shared copy of `id`. Validation guarantees every tag an equipment; a
    /// missing one becomes empty, which the normalizer refuses.
    pub fn get(&mut self, id: Option<&str>) -> Arc<str> {
        let id = id.unwrap_or_default();
        if let Some(shared) = self.0.get(id) {
            return Arc::clone(shared);
        }
        let shared: Arc<str> = Arc::from(id);
        self.0.insert(Arc::clone(&shared));
        shared
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SourceTag {
    pub tag: Arc<str>,
    pub equipment: Arc<str>,
    /// The tag's `map` key: the driver turns codes into names for every protocol.
    pub map: Option<Arc<ValueMap>>,
    /// Report by exception (its own keys over its group's); inactive by default.
    pub exception: ExceptionConfig,
}

impl SourceTag {
    /// A tag without a value map.
    pub fn new(tag: impl Into<Arc<str>>, equipment: impl Into<Arc<str>>) -> SourceTag {
        SourceTag {
            tag: tag.into(),
            equipment: equipment.into(),
            map: None,
            exception: ExceptionConfig::default(),
        }
    }

    pub fn with_map(mut self, map: Option<ValueMap>) -> SourceTag {
        self.map = map.map(Arc::new);
        self
    }

    pub fn with_exception(mut self, exception: ExceptionConfig) -> SourceTag {
        self.exception = exception;
        self
    }
}

/// One value as a protocol read it.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub value: Value,
    pub quality: Quality,
    /// The protocol's own status, or why the value is not `Ok`.
    pub raw_quality: Option<String>,
    /// Event time from the device, when the protocol gives one.
    pub source_timestamp: Option<u64>,
}

impl Sample {
    /// A good value without a device timestamp.
    pub fn ok(value: Value) -> Sample {
        Sample {
            value,
            quality: Quality::Ok,
            raw_quality: None,
            source_timestamp: None,
        }
    }

    pub fn bad(why: impl Into<String>) -> Sample {
        Sample {
            value: Value::Null,
            quality: Quality::Bad,
            raw_quality: Some(why.into()),
            source_timestamp: None,
        }
    }
}

/// What one [`Source::read`] produced, by tag index.
#[derive(Debug)]
pub struct Cycle<'a> {
    pub(super) samples: Vec<(usize, Sample)>,
    pub(super) errors: u64,
    shutdown: &'a CancellationToken,
}

impl<'a> Cycle<'a> {
    pub fn new(shutdown: &'a CancellationToken) -> Cycle<'a> {
        Cycle {
            samples: Vec::new(),
            errors: 0,
            shutdown,
        }
    }

    /// A value of tag `index` (of [`SourceIdentity::tags`]).
    pub fn push(&mut self, index: usize, sample: Sample) {
        self.samples.push((index, sample));
    }

    /// A failed read that did not lose the link (a Modbus exception, a bad node):
    /// counted in `read_errors`.
    pub fn count_error(&mut self) {
        self.errors += 1;
    }

    /// A planned stop began: finish the request in flight and return.
    pub fn stopping(&self) -> bool {
        self.shutdown.is_cancelled()
    }

    /// Samples pushed so far.
    pub fn samples(&self) -> &[(usize, Sample)] {
        &self.samples
    }

    pub fn errors(&self) -> u64 {
        self.errors
    }
}

/// What the agent gives every source: where readings go, metrics, the clock,
/// the shutdown token, randomness for its backoff, and its `/healthz` status.
#[derive(Clone)]
pub struct SourceContext {
    pub readings: mpsc::Sender<ReadingBatch>,
    pub metrics: Metrics,
    pub clock: SharedClock,
    pub shutdown: CancellationToken,
    pub status: SourceStatus,
    /// Seeded in tests, from entropy in the agent.
    pub rng: fastrand::Rng,
}
