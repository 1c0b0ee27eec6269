//! The body of a webhook request: one event's EventBridge envelope, byte for byte as the
//! engine encoded it ([`PendingEvent::from_transition`]), so a replay from the dead-letter
//! store sends the very same bytes. A webhook takes one event per request.

use crate::output::outbox::PendingEvent;
use std::sync::Arc;

/// The body for `batch`, which for a webhook holds exactly one event (the target's
/// `max_batch` is 1); `None` for an empty batch.
pub fn encode(batch: &[Arc<PendingEvent>]) -> Option<&str> {
    debug_assert!(batch.len() <= 1, "a webhook request carries one event");
    batch.first().map(|ev| &*ev.body)
}
