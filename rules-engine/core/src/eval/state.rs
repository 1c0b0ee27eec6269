//! The evaluator's state as plain data, for checkpoints: latest values, group holds,
//! current states and sequences. Compiled rules are not part of it: the service
//! reloads them, then restores the state of those whose version matches.

use super::hold::{Held, HoldState};
use super::{from_dynamic, to_dynamic, Evaluator, GroupState};
use crate::rule::is_deadline_message;
use linewatch_schemas::Value;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EvaluatorSnapshot {
    pub rules: Vec<RuleSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleSnapshot {
    pub rule_id: String,
    pub version: u64,
    pub equipment: Vec<EquipmentSnapshot>,
    /// Why the rule is quarantined (over its time budget), if it is: a decision taken
    /// once and kept, never recomputed on restore.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quarantined: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EquipmentSnapshot {
    pub equipment_id: String,
    pub values: BTreeMap<String, Value>,
    pub groups: Vec<GroupSnapshot>,
    pub current: Option<String>,
    pub sequence: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupSnapshot {
    pub name: String,
    pub fingerprint: u64,
    pub effective: Option<HeldSnapshot>,
    pub pending: Option<HeldSnapshot>,
    pub disabled: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HeldSnapshot {
    /// `None`: the group abstains.
    pub state: Option<String>,
    pub since: u64,
}

impl Evaluator {
    /// The state of every rule this evaluator owns, ordered by rule id.
    pub fn snapshot(&self) -> EvaluatorSnapshot {
        let mut rules: Vec<RuleSnapshot> = self
            .slots
            .iter()
            .flatten()
            .map(|inst| {
                let rule = &inst.rule;
                let name = |v: Option<u16>| v.map(|i| rule.shape.states[i as usize].clone());
                let held = |h: Option<Held>| {
                    h.map(|h| HeldSnapshot {
                        state: name(h.vote),
                        since: h.since,
                    })
                };
                RuleSnapshot {
                    rule_id: rule.id.clone(),
                    version: rule.version,
                    quarantined: inst.budget.quarantined.clone(),
                    equipment: rule
                        .equipment
                        .iter()
                        .zip(&inst.equipment)
                        .map(|(id, eq)| EquipmentSnapshot {
                            equipment_id: id.clone(),
                            values: rule
                                .shape
                                .tags
                                .iter()
                                .zip(&eq.values)
                                .filter_map(|(t, v)| Some((t.clone(), from_dynamic(v.as_ref()?))))
                                .collect(),
                            groups: rule
                                .shape
                                .groups
                                .iter()
                                .zip(&eq.groups)
                                .zip(&rule.fingerprints)
                                .map(|((g, gs), f)| GroupSnapshot {
                                    name: g.name.clone(),
                                    fingerprint: *f,
                                    effective: held(gs.hold.effective),
                                    pending: held(gs.hold.pending),
                                    disabled: gs.disabled.clone(),
                                })
                                .collect(),
                            current: name(eq.current).or_else(|| eq.orphan_current.clone()),
                            sequence: eq.sequence,
                        })
                        .collect(),
                }
            })
            .collect();
        rules.sort_by(|a, b| a.rule_id.cmp(&b.rule_id));
        EvaluatorSnapshot { rules }
    }

    /// Put back the state of loaded rules whose id and version match the snapshot.
    /// Groups are matched by name and definition; anything that does not match
    /// starts fresh. Returns the ids of snapshot rules that were not restored.
    pub fn restore(&mut self, snapshot: &EvaluatorSnapshot) -> Vec<String> {
        let mut skipped = Vec::new();
        for rs in &snapshot.rules {
            let Some(&slot) = self.by_id.get(&rs.rule_id) else {
                skipped.push(rs.rule_id.clone());
                continue;
            };
            let Some(inst) = self.slots[slot as usize].as_mut() else {
                skipped.push(rs.rule_id.clone());
                continue;
            };
            if inst.rule.version != rs.version {
                skipped.push(rs.rule_id.clone());
                continue;
            }
            let rule = std::sync::Arc::clone(&inst.rule);
            for es in &rs.equipment {
                let Some(e) = rule.equipment.iter().position(|x| *x == es.equipment_id) else {
                    continue;
                };
                // Drop timers of whatever state this equipment had.
                for (g, gs) in inst.equipment[e].groups.iter().enumerate() {
                    if let Some(d) = gs.hold.deadline(rule.shape.groups[g].hold_ms) {
                        self.timers
                            .remove(inst.equipment[e].domain, &(d, slot, e as u16, g as u16));
                    }
                }
                let eq = &mut inst.equipment[e];
                for (t, tag) in rule.shape.tags.iter().enumerate() {
                    eq.values[t] = es.values.get(tag).map(to_dynamic);
                }
                let vote = |s: &Option<String>| -> Option<Option<u16>> {
                    match s {
                        None => Some(None),
                        Some(name) => rule.shape.state_index(name).map(Some),
                    }
                };
                let held = |h: &Option<HeldSnapshot>| -> Option<Option<Held>> {
                    match h {
                        None => Some(None),
                        Some(h) => vote(&h.state).map(|v| {
                            Some(Held {
                                vote: v,
                                since: h.since,
                            })
                        }),
                    }
                };
                for (g, group) in rule.shape.groups.iter().enumerate() {
                    let fingerprint = rule.fingerprints[g];
                    let restored = es
                        .groups
                        .iter()
                        .find(|s| s.name == group.name && s.fingerprint == fingerprint)
                        .and_then(|s| match (held(&s.effective), held(&s.pending)) {
                            (Some(effective), Some(pending)) => Some(GroupState {
                                hold: HoldState { effective, pending },
                                // Older versions also disabled a group for a deadline hit;
                                // only deterministic limits keep it disabled.
                                disabled: s
                                    .disabled
                                    .clone()
                                    .filter(|why| !is_deadline_message(why)),
                                last_error: None,
                            }),
                            _ => None,
                        });
                    eq.groups[g] = restored.unwrap_or_default();
                    if let Some(d) = eq.groups[g].hold.deadline(group.hold_ms) {
                        self.timers.insert(eq.domain, (d, slot, e as u16, g as u16));
                    }
                }
                eq.current = es
                    .current
                    .as_deref()
                    .and_then(|c| rule.shape.state_index(c));
                eq.orphan_current = match (eq.current, &es.current) {
                    (None, Some(c)) => Some(c.clone()),
                    _ => None,
                };
                eq.sequence = es.sequence;
            }
            if let Some(why) = &rs.quarantined {
                inst.budget.quarantined = Some(why.clone());
                super::drop_timers(&mut self.timers, &rule, &mut inst.equipment, slot);
            }
        }
        skipped
    }
}
