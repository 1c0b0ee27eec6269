//! The life-cycle every source shares, around one [`Source`]: connect with
//! backoff, one `Syn` batch per outage, `Fst` on the first reading of each tag
//! after every (re)connect, report by exception per tag, heartbeats while fresh, on a
//! planned stop each tag's last reading once more with `Lst` (and a last `Lst`
//! heartbeat), metrics and `/healthz` status. The decisions are [`LinkState`]'s, the
//! reconnect [`Backoff`]'s and each tag's [`ExceptionFilter`]'s (pure); this module
//! waits and sends.

use super::config::CommonSourceConfig;
use super::exception::{ExceptionFilter, Verdict};
use super::link::{reconnect_backoff, LinkState};
use super::source::{Cycle, Sample, Source, SourceContext, SourceTag};
use super::status::LinkPhase;
use super::{Reading, ReadingBatch};
use linewatch_runtime::shutdown::CancellationToken;
use linewatch_runtime::Backoff;
use linewatch_schemas::{Flag, Flags, Quality, Value, HEARTBEAT_TAG};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use std::sync::Arc;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tracing::{info, warn};

/// Run `src` until `ctx.shutdown`. Never returns on device errors: it reconnects
/// with backoff, so the agent keeps running while a PLC is offline.
pub async fn run<S: Source>(src: S, settings: CommonSourceConfig, ctx: SourceContext) {
    let mut d = Driver::new(src, settings, ctx);
    let stop = d.run().await;
    let (id, kind) = (&d.src.identity().id, d.src.identity().kind);
    match stop {
        Stop::Shutdown => info!(source = %id, kind, "source stopped"),
        Stop::ChannelClosed => {
            warn!(source = %id, kind, "source stopped: reading channel closed")
        }
    }
    d.connected.set(0);
    d.ctx.status.set_phase(LinkPhase::Stopped);
}

enum Stop {
    Shutdown,
    /// The normaliser is gone: nobody takes readings any more.
    ChannelClosed,
}

enum SessionEnd<E> {
    Lost(E),
    Stop(Stop),
}

struct Driver<S> {
    src: S,
    settings: CommonSourceConfig,
    ctx: SourceContext,
    link: LinkState,
    backoff: Backoff,
    heartbeat_equipment: Option<Arc<str>>,
    /// Per tag, `Some` where it reports by exception (empty when no tag does).
    filters: Vec<Option<ExceptionFilter>>,
    /// Per tag, its last reading since connecting: sent again with `Lst` on a planned stop.
    last_read: Vec<Option<Sample>>,
    points_read: Counter,
    exception_passed: Counter,
    exception_suppressed: Counter,
    read_errors: Counter,
    connected: Gauge,
}

impl<S: Source> Driver<S> {
    fn new(src: S, settings: CommonSourceConfig, ctx: SourceContext) -> Driver<S> {
        let identity = src.identity();
        let label = ctx.metrics.source(&identity.id);
        let stale_after = identity.cycle_period + settings.timeout + settings.heartbeat_interval;
        // The source's equipment, else the first tag's (validation makes every tag have one).
        let heartbeat_equipment = match &settings.equipment_id {
            Some(e) => Some(Arc::from(e.as_str())),
            None => identity.tags.first().map(|t| Arc::clone(&t.equipment)),
        };
        let points_read = ctx.metrics.points_read.get_or_create(&label).clone();
        let read_errors = ctx.metrics.read_errors.get_or_create(&label).clone();
        let connected = ctx.metrics.source_connected.get_or_create(&label).clone();
        let exception_passed = ctx.metrics.exception_passed.get_or_create(&label).clone();
        let exception_suppressed = ctx
            .metrics
            .exception_suppressed
            .get_or_create(&label)
            .clone();
        let filters = if identity.tags.iter().any(|t| t.exception.is_active()) {
            identity
                .tags
                .iter()
                .map(|t| {
                    t.exception
                        .is_active()
                        .then(|| ExceptionFilter::new(t.exception))
                })
                .collect()
        } else {
            Vec::new()
        };
        Driver {
            filters,
            last_read: vec![None; identity.tags.len()],
            exception_passed,
            exception_suppressed,
            link: LinkState::new(identity.tags.len(), stale_after),
            backoff: reconnect_backoff(settings.reconnect_initial, settings.reconnect_max),
            heartbeat_equipment,
            points_read,
            read_errors,
            connected,
            src,
            settings,
            ctx,
        }
    }

    async fn run(&mut self) -> Stop {
        let shutdown = self.ctx.shutdown.clone();
        self.connected.set(0);
        let identity = self.src.identity();
        info!(source = %identity.id, kind = identity.kind, tags = identity.tags.len(), "source starting");
        loop {
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return Stop::Shutdown,
                r = self.src.connect() => r,
            };
            let err = match attempt {
                Ok(mut link) => {
                    self.link.on_connected();
                    // `Lst` repeats a reading of this session only.
                    self.last_read.fill(None);
                    self.connected.set(1);
                    self.ctx.status.set_phase(LinkPhase::Connected);
                    let identity = self.src.identity();
                    info!(source = %identity.id, kind = identity.kind, "source connected");
                    let end = self.session(&mut link, &shutdown).await;
                    self.connected.set(0);
                    if matches!(end, SessionEnd::Stop(Stop::Shutdown)) {
                        // Best effort: a closed channel means nobody would read it anyway.
                        let _sent = self.send_last().await;
                    }
                    // Politely close; a dead peer must not hold us up.
                    let _closed =
                        tokio::time::timeout(self.settings.timeout, self.src.close(link)).await;
                    match end {
                        SessionEnd::Lost(e) => e,
                        SessionEnd::Stop(stop) => return stop,
                    }
                }
                Err(e) => {
                    self.read_errors.inc();
                    e
                }
            };
            let delay = self.backoff.next_delay(&mut self.ctx.rng);
            let why = err.to_string();
            let identity = self.src.identity();
            warn!(source = %identity.id, kind = identity.kind, error = %why, retry_in = ?delay, "source down");
            self.ctx.status.set_down(why.clone());
            if self.link.on_link_down() {
                let batch = syn_batch(&identity.id, &identity.tags, &why);
                if self.send(batch).await.is_err() {
                    return Stop::ChannelClosed;
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Stop::Shutdown,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Read cycles while connected, with heartbeats in between.
    async fn session(
        &mut self,
        link: &mut S::Link,
        shutdown: &CancellationToken,
    ) -> SessionEnd<S::Error> {
        let period = self.settings.heartbeat_interval;
        let mut heartbeat = (!period.is_zero() && self.heartbeat_equipment.is_some()).then(|| {
            let mut iv = tokio::time::interval_at(Instant::now() + period, period);
            iv.set_missed_tick_behavior(MissedTickBehavior::Skip);
            iv
        });
        loop {
            let due = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return SessionEnd::Stop(Stop::Shutdown),
                due = self.src.next_cycle(link) => Some(due),
                _ = tick_opt(&mut heartbeat) => None,
            };
            let Some(due) = due else {
                if self.link.heartbeat_due(self.ctx.clock.now_ms()) {
                    let hb = self.heartbeat(Flags::empty().with(Flag::Wmk));
                    if self.send(hb).await.is_err() {
                        return SessionEnd::Stop(Stop::ChannelClosed);
                    }
                }
                continue;
            };
            let mut out = Cycle::new(shutdown);
            let result = self.src.read(link, due, &mut out).await;
            self.read_errors
                .inc_by(out.errors + u64::from(result.is_err()));
            // A cycle cut short by a planned stop says nothing about the device.
            let interrupted = result.is_ok() && out.stopping();
            if !interrupted {
                let now = self.ctx.clock.now_ms();
                self.link.on_cycle_done(result.is_ok(), now);
                if result.is_ok() {
                    self.backoff.reset();
                    self.ctx.status.set_good_read(now);
                }
            }
            self.points_read.inc_by(out.samples.len() as u64);
            let batch = self.readings(std::mem::take(&mut out.samples));
            if !batch.is_empty() && self.send(batch).await.is_err() {
                return SessionEnd::Stop(Stop::ChannelClosed);
            }
            match result {
                Err(e) => return SessionEnd::Lost(e),
                Ok(()) if interrupted => return SessionEnd::Stop(Stop::Shutdown),
                Ok(()) => {}
            }
        }
    }

    /// A cycle's samples as readings, `Fst` on each tag's first since connecting,
    /// each through its tag's value map, then its report-by-exception filter (an
    /// `Fst` always passes).
    fn readings(&mut self, samples: Vec<(usize, Sample)>) -> ReadingBatch {
        let identity = self.src.identity();
        let now = self.ctx.clock.now_ms();
        let mut batch = Vec::with_capacity(samples.len());
        for (index, sample) in samples {
            let Some(tag) = identity.tags.get(index) else {
                continue;
            };
            let sample = match &tag.map {
                Some(map) => map.apply(sample),
                None => sample,
            };
            let flags = self.link.flags_for(index);
            if let Some(last) = self.last_read.get_mut(index) {
                *last = Some(sample.clone());
            }
            if let Some(Some(filter)) = self.filters.get_mut(index) {
                let forced = flags.contains(Flag::Fst);
                match filter.decide(&sample.value, sample.quality, forced, now) {
                    Verdict::Pass => self.exception_passed.inc(),
                    Verdict::Suppress => {
                        self.exception_suppressed.inc();
                        continue;
                    }
                };
            }
            batch.push(reading(&identity.id, tag, sample, flags));
        }
        batch
    }

    fn heartbeat(&self, flags: Flags) -> ReadingBatch {
        let Some(equipment) = &self.heartbeat_equipment else {
            return Vec::new();
        };
        vec![Reading {
            source_id: Arc::clone(&self.src.identity().id),
            equipment_id: Arc::clone(equipment),
            tag: Arc::from(HEARTBEAT_TAG),
            value: Value::Null,
            quality: Quality::Ok,
            source_timestamp: None,
            flags,
            raw_quality: None,
        }]
    }

    /// A planned stop while fresh: each tag's last reading once more, flagged `Lst`
    /// (a value report by exception held back is not lost either), then the `Lst`
    /// heartbeat when heartbeats are on. Nothing while down or stale: the last
    /// record then already was the `Syn` batch.
    async fn send_last(&mut self) -> Result<(), Stop> {
        let Some(heartbeat_flags) = self.link.last_flags(self.ctx.clock.now_ms()) else {
            return Ok(());
        };
        let identity = self.src.identity();
        let lst = Flags::empty().with(Flag::Lst);
        let mut batch: ReadingBatch = identity
            .tags
            .iter()
            .zip(self.last_read.iter_mut())
            .filter_map(|(tag, last)| Some(reading(&identity.id, tag, last.take()?, lst)))
            .collect();
        if !self.settings.heartbeat_interval.is_zero() {
            batch.extend(self.heartbeat(heartbeat_flags));
        }
        self.send(batch).await
    }

    async fn send(&self, batch: ReadingBatch) -> Result<(), Stop> {
        if batch.is_empty() {
            return Ok(());
        }
        self.ctx
            .readings
            .send(batch)
            .await
            .map_err(|_| Stop::ChannelClosed)
    }
}

/// One `Bad`, `Syn` reading per tag of the source: the gap is never silent.
pub fn syn_batch(source_id: &Arc<str>, tags: &[SourceTag], why: &str) -> ReadingBatch {
    let flags = Flags::empty().with(Flag::Syn);
    tags.iter()
        .map(|tag| reading(source_id, tag, Sample::bad(why), flags))
        .collect()
}

fn reading(source_id: &Arc<str>, tag: &SourceTag, s: Sample, flags: Flags) -> Reading {
    Reading {
        source_id: Arc::clone(source_id),
        equipment_id: Arc::clone(&tag.equipment),
        tag: Arc::clone(&tag.tag),
        value: s.value,
        quality: s.quality,
        source_timestamp: s.source_timestamp,
        flags,
        raw_quality: s.raw_quality,
    }
}

async fn tick_opt(iv: &mut Option<Interval>) {
    match iv {
        Some(iv) => {
            iv.tick().await;
        }
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
