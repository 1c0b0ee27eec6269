//! What to ask the server for, decided without it: monitored-item requests
//! (sampling, queue, deadband filter, client handle = tag index + 1), how the
//! items of a group are split over subscriptions and calls, and the watchdog's
//! deadline. Pure.

use super::config::Deadband;
use opcua::types::{
    DataChangeFilter, DataChangeTrigger, DeadbandType, ExtensionObject, MonitoredItemCreateRequest,
    MonitoringMode, MonitoringParameters, NodeId, ReadValueId,
};
use std::time::Duration;
use tokio::time::Instant;

/// The client handle of tag `index`: 0 is reserved (the crate would assign its own).
pub fn client_handle(tag_index: usize) -> u32 {
    u32::try_from(tag_index + 1).unwrap_or(u32::MAX)
}

/// The tag index of a client handle, when it is one of ours.
pub fn tag_of_handle(handle: u32) -> Option<usize> {
    (handle as usize).checked_sub(1)
}

/// The DataChangeFilter of a deadband; `None` asks for every change.
pub fn filter(deadband: Deadband) -> Option<DataChangeFilter> {
    let (kind, value) = match deadband {
        Deadband::None => return None,
        Deadband::Absolute(v) => (DeadbandType::Absolute, v),
        Deadband::Percent(v) => (DeadbandType::Percent, v),
    };
    Some(DataChangeFilter {
        // A status change is a change too: a value going Bad must be reported.
        trigger: DataChangeTrigger::StatusValue,
        deadband_type: kind as u32,
        deadband_value: value,
    })
}

/// One monitored item request.
pub fn monitored_item(
    node: NodeId,
    tag_index: usize,
    sampling: Duration,
    queue_size: u32,
    deadband: Deadband,
) -> MonitoredItemCreateRequest {
    let filter = filter(deadband).map_or_else(ExtensionObject::null, ExtensionObject::from_message);
    MonitoredItemCreateRequest::new(
        ReadValueId::from(node),
        MonitoringMode::Reporting,
        MonitoringParameters {
            client_handle: client_handle(tag_index),
            sampling_interval: sampling.as_secs_f64() * 1000.0,
            filter,
            queue_size,
            discard_oldest: true,
        },
    )
}

/// `items` in runs of at most `limit` (a limit of 0 means one run).
pub fn split<T>(items: Vec<T>, limit: usize) -> Vec<Vec<T>> {
    if limit == 0 || items.len() <= limit {
        return if items.is_empty() {
            Vec::new()
        } else {
            vec![items]
        };
    }
    let mut out = Vec::with_capacity(items.len().div_ceil(limit));
    let mut it = items.into_iter().peekable();
    while it.peek().is_some() {
        out.push(it.by_ref().take(limit).collect());
    }
    out
}

/// The operation limit to use: the server's (0 means none), capped by ours.
pub fn effective_limit(server: u32, ours: usize) -> usize {
    match server {
        0 => ours,
        s => (s as usize).min(ours.max(1)),
    }
}

/// Rebuild the session when neither a data change nor a keep-alive came for `bound`.
#[derive(Debug, Clone, Copy)]
pub struct Watchdog {
    bound: Duration,
    last_alive: Instant,
}

impl Watchdog {
    pub fn new(bound: Duration, now: Instant) -> Watchdog {
        Watchdog {
            bound,
            last_alive: now,
        }
    }

    /// A publish response (data or keep-alive) arrived.
    pub fn alive(&mut self, now: Instant) {
        self.last_alive = self.last_alive.max(now);
    }

    pub fn deadline(&self) -> Instant {
        self.last_alive + self.bound
    }

    pub fn expired(&self, now: Instant) -> bool {
        now >= self.deadline()
    }

    /// Time since the last sign of life.
    pub fn age(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_alive)
    }

    pub fn bound(&self) -> Duration {
        self.bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn handles_round_trip_and_zero_is_not_ours() {
        assert_eq!(client_handle(0), 1);
        assert_eq!(tag_of_handle(client_handle(41)), Some(41));
        assert_eq!(tag_of_handle(0), None);
    }

    #[test]
    fn deadbands_become_data_change_filters() {
        assert!(filter(Deadband::None).is_none());
        let f = filter(Deadband::Absolute(0.5)).expect("filter");
        assert_eq!((f.deadband_type, f.deadband_value), (1, 0.5));
        assert_eq!(f.trigger, DataChangeTrigger::StatusValue);
        let f = filter(Deadband::Percent(2.0)).expect("filter");
        assert_eq!(f.deadband_type, 2);
        let item = monitored_item(
            NodeId::new(2, 7),
            4,
            Duration::from_millis(250),
            5,
            Deadband::Absolute(1.0),
        );
        let p = &item.requested_parameters;
        assert_eq!(
            (p.client_handle, p.sampling_interval, p.queue_size),
            (5, 250.0, 5)
        );
        assert!(!p.filter.is_null());
        let item = monitored_item(NodeId::new(2, 7), 0, Duration::ZERO, 1, Deadband::None);
        assert!(item.requested_parameters.filter.is_null());
    }

    #[test]
    fn server_limits_cap_ours() {
        assert_eq!(effective_limit(0, 1000), 1000);
        assert_eq!(effective_limit(200, 1000), 200);
        assert_eq!(effective_limit(5000, 1000), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_fires_a_bound_after_the_last_sign_of_life() {
        let t0 = Instant::now();
        let mut w = Watchdog::new(Duration::from_secs(3), t0);
        assert!(!w.expired(t0 + Duration::from_millis(2999)));
        assert!(w.expired(t0 + Duration::from_secs(3)));
        w.alive(t0 + Duration::from_secs(2));
        assert_eq!(w.deadline(), t0 + Duration::from_secs(5));
        // A late report of an older event does not move it back.
        w.alive(t0 + Duration::from_secs(1));
        assert_eq!(w.deadline(), t0 + Duration::from_secs(5));
        assert_eq!(w.age(t0 + Duration::from_secs(4)), Duration::from_secs(2));
    }

    proptest! {
        #[test]
        fn split_keeps_every_item_in_order_within_the_limit(n in 0usize..300, limit in 0usize..50) {
            let items: Vec<usize> = (0..n).collect();
            let runs = split(items.clone(), limit);
            prop_assert_eq!(runs.concat(), items);
            if limit > 0 {
                prop_assert!(runs.iter().all(|r| !r.is_empty() && r.len() <= limit));
                prop_assert_eq!(runs.len(), n.div_ceil(limit));
            }
        }
    }
}
