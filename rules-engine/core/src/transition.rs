//! What the engine emits: a change of a rule's winning state, with its explanation,
//! and the EventBridge-style envelope the service will POST.

use linewatch_schemas::Value;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// A rule's state changed. This is the `detail` of the event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transition {
    pub rule_id: String,
    pub rule_version: u64,
    pub equipment_id: String,
    /// `None` for the rule's first state.
    pub previous_state: Option<String>,
    pub state: String,
    /// Event time of the change, ms since the Unix epoch.
    pub event_time: u64,
    /// Per (rule, equipment), from 1; continues across rule updates.
    pub sequence: u64,
    /// Deterministic: `{ruleId}/{equipmentId}/{eventTime}/{sequence}`.
    pub transition_id: String,
    /// Every group of the rule, in definition order.
    pub groups: Vec<GroupExplanation>,
    /// The latest values of the tags read by the groups that voted for the new state.
    pub values: BTreeMap<String, Value>,
    /// Caused by a point that arrived after its clock had passed it, evaluated anyway
    /// (the `apply` late policy) at the clock's time; absent otherwise.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub late: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupExplanation {
    pub name: String,
    /// The group's vote; `None` if it abstains or has not seen all its tags.
    pub state: Option<String>,
    pub weight: u32,
    /// Since when the group has voted this way (start of the raw state).
    pub since: Option<u64>,
    /// A change waiting out the group's hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<PendingExplanation>,
    /// Set when the group was disabled by a sandbox limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PendingExplanation {
    pub state: Option<String>,
    pub since: u64,
    pub due: u64,
}

/// Namespace of event ids (a fixed, random UUID): `id = uuid_v5(NS, transitionId)`.
pub const EVENT_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5d1c_6f0e_8a3b_4c2d_9e7f_1a2b_3c4d_5e6f);

pub fn transition_id(rule_id: &str, equipment_id: &str, event_time: u64, sequence: u64) -> String {
    format!("{rule_id}/{equipment_id}/{event_time}/{sequence}")
}

/// Where the envelope says it comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventSource {
    pub account: String,
    pub region: String,
}

/// The EventBridge envelope of a transition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub version: String,
    pub id: Uuid,
    #[serde(rename = "detail-type")]
    pub detail_type: String,
    pub source: String,
    pub account: String,
    /// RFC 3339, whole seconds, UTC.
    pub time: String,
    pub region: String,
    pub resources: Vec<String>,
    pub detail: Transition,
}

impl Transition {
    /// Deterministic event id: the same transition replayed gets the same id.
    pub fn event_id(&self) -> Uuid {
        Uuid::new_v5(&EVENT_ID_NAMESPACE, self.transition_id.as_bytes())
    }

    pub fn to_event(&self, src: &EventSource) -> Event {
        Event {
            version: "0".into(),
            id: self.event_id(),
            detail_type: "Rule State Changed".into(),
            source: "linewatch.rules".into(),
            account: src.account.clone(),
            time: rfc3339_seconds(self.event_time),
            region: src.region.clone(),
            resources: vec![format!("linewatch:rule/{}", self.rule_id)],
            detail: self.clone(),
        }
    }

    /// The order the engine emits transitions in, whatever the number of workers.
    pub(crate) fn order_key(&self) -> (u64, &str, &str, u64) {
        (
            self.event_time,
            &self.rule_id,
            &self.equipment_id,
            self.sequence,
        )
    }
}

/// Event time as RFC 3339 (whole seconds, UTC), clamped to the format's last
/// second (year 9999) rather than failing on an absurd timestamp.
fn rfc3339_seconds(ms: u64) -> String {
    const LAST_SECOND: u64 = 253_402_300_799;
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs((ms / 1000).min(LAST_SECOND));
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelope_matches_the_event_schema() {
        let t = Transition {
            rule_id: "filler-7-overheat".into(),
            rule_version: 3,
            equipment_id: "84068f2f".into(),
            previous_state: Some("ACTIVE".into()),
            state: "WARNING".into(),
            event_time: 1_732_180_000_123,
            sequence: 17,
            transition_id: transition_id("filler-7-overheat", "84068f2f", 1_732_180_000_123, 17),
            groups: vec![],
            values: BTreeMap::from([("water_temperature".into(), Value::Float(84.2))]),
            late: false,
        };
        let e = serde_json::to_value(t.to_event(&EventSource {
            account: "123456789012".into(),
            region: "eu-central-1".into(),
        }))
        .unwrap();
        assert_eq!(e["detail-type"], "Rule State Changed");
        assert_eq!(e["time"], "2024-11-21T09:06:40Z");
        assert_eq!(e["resources"][0], "linewatch:rule/filler-7-overheat");
        assert_eq!(e["detail"]["previousState"], "ACTIVE");
        assert_eq!(
            e["detail"]["transitionId"],
            "filler-7-overheat/84068f2f/1732180000123/17"
        );
        assert_eq!(e["id"], t.event_id().to_string());
        // Same transition, same id; another sequence, another id.
        let mut u = t.clone();
        assert_eq!(u.event_id(), t.event_id());
        u.transition_id = transition_id("filler-7-overheat", "84068f2f", 1_732_180_000_123, 18);
        assert_ne!(u.event_id(), t.event_id());
        // Absurd timestamps do not break the envelope.
        u.event_time = u64::MAX;
        assert_eq!(
            u.to_event(&EventSource {
                account: "a".into(),
                region: "r".into()
            })
            .time,
            "9999-12-31T23:59:59Z"
        );
    }
}
