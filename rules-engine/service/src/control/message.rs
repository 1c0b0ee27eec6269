//! The control topic's wire formats: topic names, rule messages, status messages. Pure.

use super::auth::{self, Operation, SecretKey, Signature, Trust, Verdict};
use linewatch_rules_core::lifecycle::ChangeOutcome;
use linewatch_rules_core::rule::MAX_ID_LEN;
use serde::{Deserialize, Serialize};

/// The topic names under one prefix: rules on `{prefix}/rules/{ruleId}`, status on
/// `{prefix}/status/{ruleId}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    pub fn new(prefix: impl Into<String>) -> Topics {
        Topics {
            prefix: prefix.into(),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The subscription of an engine: every rule, one level below `rules/`.
    pub fn rules_filter(&self) -> String {
        format!("{}/rules/+", self.prefix)
    }

    pub fn rule(&self, rule_id: &str) -> String {
        format!("{}/rules/{rule_id}", self.prefix)
    }

    pub fn status(&self, rule_id: &str) -> String {
        format!("{}/status/{rule_id}", self.prefix)
    }

    /// The rule id of a topic under `{prefix}/rules/`, or why the topic is not one.
    pub fn rule_id_of<'t>(&self, topic: &'t str) -> Result<&'t str, String> {
        let id = topic
            .strip_prefix(self.prefix.as_str())
            .and_then(|rest| rest.strip_prefix("/rules/"))
            .ok_or_else(|| format!("topic is not under {}/rules/", self.prefix))?;
        check_rule_id(id)?;
        Ok(id)
    }
}

/// Rule ids are 1–128 characters of `A–Z a–z 0–9 - _ . :` (the same rule as a script's `id`).
pub fn check_rule_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!(
            "rule id must have 1 to {MAX_ID_LEN} characters, got {}",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':')))
    {
        return Err(format!(
            "rule id {id:?} contains {c:?}; allowed are letters, digits and - _ . :"
        ));
    }
    Ok(())
}

/// A rule as carried on `{prefix}/rules/{ruleId}`:
/// `{"version": 3, "script": "...", "signature": {"key": "..", "sig": ".."}}`.
/// The version is authoritative (it overrides anything the script says).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleMessage {
    pub version: u64,
    pub script: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// A delete: `{"delete": true, "version": 3, "signature": {..}}` deletes the rule if the
/// loaded version is at most 3. An empty payload is an unsigned delete of any version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteMessage {
    pub version: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

/// What a message on a rule topic asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RulePayload {
    Upsert(RuleMessage),
    Delete(DeleteMessage),
}

const SHAPE: &str =
    r#"expected JSON {"version": N, "script": "..."} or {"delete": true, "version": N}"#;

impl RulePayload {
    /// Decode a payload: empty means "delete the rule" (unsigned). Unknown fields are
    /// ignored; anything else that is not one of the shapes is an error saying why.
    pub fn decode(payload: &[u8]) -> Result<RulePayload, String> {
        if payload.is_empty() {
            return Ok(RulePayload::Delete(DeleteMessage::default()));
        }
        let text = std::str::from_utf8(payload)
            .map_err(|e| format!("payload is not UTF-8 ({e}); {SHAPE}"))?;
        // Decode in two steps so the error names the field at fault rather than serde's
        // generic "invalid type".
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| format!("payload is not JSON ({e}); {SHAPE}"))?;
        let obj = value.as_object().ok_or_else(|| {
            format!(
                "payload is JSON {}, expected an object; {SHAPE}",
                json_kind(&value)
            )
        })?;
        let version = match obj.get("version") {
            None => return Err("payload has no \"version\"".into()),
            Some(v) => v
                .as_u64()
                .ok_or_else(|| format!("\"version\" must be a non-negative integer, got {v}"))?,
        };
        let signature = match obj.get("signature") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(serde_json::from_value::<Signature>(v.clone()).map_err(|e| {
                format!("\"signature\" must be {{\"key\": hex, \"sig\": hex}}: {e}")
            })?),
        };
        match obj.get("delete") {
            None | Some(serde_json::Value::Bool(false)) => {}
            Some(serde_json::Value::Bool(true)) => {
                return Ok(RulePayload::Delete(DeleteMessage {
                    version: Some(version),
                    signature,
                }))
            }
            Some(v) => return Err(format!("\"delete\" must be true, got {}", json_kind(v))),
        }
        let script = match obj.get("script") {
            None => return Err("payload has no \"script\"".into()),
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(v) => return Err(format!("\"script\" must be a string, got {}", json_kind(v))),
        };
        Ok(RulePayload::Upsert(RuleMessage {
            version,
            script,
            signature,
        }))
    }

    /// The version the message names, if any.
    pub fn version(&self) -> Option<u64> {
        match self {
            RulePayload::Upsert(m) => Some(m.version),
            RulePayload::Delete(d) => d.version,
        }
    }

    /// Is this message authorised for `rule_id` under `trust`? An unsigned empty
    /// payload only passes with `accept_unsigned`.
    pub fn check(&self, rule_id: &str, trust: &Trust) -> Result<Verdict, String> {
        match self {
            RulePayload::Upsert(m) => trust.check(
                &auth::rule_signing_bytes(
                    rule_id,
                    m.version,
                    Operation::Upsert { script: &m.script },
                ),
                m.signature.as_ref(),
            ),
            RulePayload::Delete(d) => match (d.version, &d.signature) {
                (Some(v), sig) => trust.check(
                    &auth::rule_signing_bytes(rule_id, v, Operation::Delete),
                    sig.as_ref(),
                ),
                (None, _) => trust.check(&[], None),
            },
        }
    }
}

impl RuleMessage {
    /// Decode an upsert; `Ok(None)` for any delete (see [`RulePayload::decode`]).
    pub fn decode(payload: &[u8]) -> Result<Option<RuleMessage>, String> {
        Ok(match RulePayload::decode(payload)? {
            RulePayload::Upsert(m) => Some(m),
            RulePayload::Delete(_) => None,
        })
    }

    /// An upsert of `rule_id` signed with `key`.
    pub fn signed(rule_id: &str, version: u64, script: String, key: &SecretKey) -> RuleMessage {
        let bytes =
            auth::rule_signing_bytes(rule_id, version, Operation::Upsert { script: &script });
        RuleMessage {
            version,
            signature: Some(key.sign(&bytes)),
            script,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // A struct of a u64 and strings always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }
}

impl DeleteMessage {
    /// A delete of `rule_id` up to `version`, signed with `key`.
    pub fn signed(rule_id: &str, version: u64, key: &SecretKey) -> DeleteMessage {
        let bytes = auth::rule_signing_bytes(rule_id, version, Operation::Delete);
        DeleteMessage {
            version: Some(version),
            signature: Some(key.sign(&bytes)),
        }
    }

    /// The payload: empty when unsigned and without a version (the plain MQTT clear).
    pub fn encode(&self) -> Vec<u8> {
        if self.version.is_none() && self.signature.is_none() {
            return Vec::new();
        }
        let mut v = serde_json::json!({"delete": true, "version": self.version});
        if let Some(sig) = &self.signature {
            v["signature"] = serde_json::json!(sig);
        }
        v.to_string().into_bytes()
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// What became of a rule message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StatusKind {
    /// Added or updated.
    Accepted,
    /// Not loaded: the script does not compile, the message is malformed, the id differs.
    Rejected,
    Deleted,
    /// The version is not higher than the loaded one; nothing changed.
    Ignored,
    /// Delete of a rule that is not loaded.
    NotFound,
    /// Loaded, but no longer evaluated: its evaluations kept exceeding the time budget.
    /// `error` says why and from which event time; a new version lifts it.
    Quarantined,
}

/// The status message on `{prefix}/status/{ruleId}` (retained, QoS 1):
/// `{"ruleId":"x","version":3,"status":"accepted","error":null,"outcome":{...},"instance":"rules-1","at":1700000000000}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleStatus {
    pub rule_id: String,
    /// The version the status is about: the offered one, or for a delete the version
    /// that was deleted. `null` when there is none (a delete of an unknown rule, a
    /// payload without a readable version).
    pub version: Option<u64>,
    pub status: StatusKind,
    pub error: Option<String>,
    pub outcome: Option<ChangeOutcome>,
    /// The engine instance that applied the change.
    pub instance: String,
    /// Unix milliseconds.
    pub at: u64,
    /// By the engine's status key (`mqtt.auth.status_key`), over the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,
}

impl RuleStatus {
    /// The status of a change the rule set applied (or declined to).
    pub fn from_outcome(
        outcome: ChangeOutcome,
        instance: impl Into<String>,
        at_ms: u64,
    ) -> RuleStatus {
        let (rule_id, version, status) = match &outcome {
            ChangeOutcome::Added { rule_id, version } => {
                (rule_id, Some(*version), StatusKind::Accepted)
            }
            ChangeOutcome::Updated { rule_id, to, .. } => {
                (rule_id, Some(*to), StatusKind::Accepted)
            }
            ChangeOutcome::Deleted { rule_id, version } => {
                (rule_id, Some(*version), StatusKind::Deleted)
            }
            ChangeOutcome::IgnoredStaleVersion {
                rule_id, offered, ..
            } => (rule_id, Some(*offered), StatusKind::Ignored),
            ChangeOutcome::NotFound { rule_id } => (rule_id, None, StatusKind::NotFound),
        };
        RuleStatus {
            rule_id: rule_id.clone(),
            version,
            status,
            error: None,
            instance: instance.into(),
            at: at_ms,
            outcome: Some(outcome),
            signature: None,
        }
    }

    /// A rule message that was not applied: `error` says why.
    pub fn rejected(
        rule_id: impl Into<String>,
        version: Option<u64>,
        error: impl Into<String>,
        instance: impl Into<String>,
        at_ms: u64,
    ) -> RuleStatus {
        RuleStatus {
            rule_id: rule_id.into(),
            version,
            status: StatusKind::Rejected,
            error: Some(error.into()),
            outcome: None,
            instance: instance.into(),
            at: at_ms,
            signature: None,
        }
    }

    /// The engine quarantined a loaded rule at `event_time` (its evaluations kept
    /// exceeding the time budget): a decision, published so it can be reproduced.
    pub fn quarantined(
        rule_id: impl Into<String>,
        version: u64,
        event_time: u64,
        why: &str,
        instance: impl Into<String>,
        at_ms: u64,
    ) -> RuleStatus {
        RuleStatus {
            rule_id: rule_id.into(),
            version: Some(version),
            status: StatusKind::Quarantined,
            error: Some(format!("from event time {event_time}: {why}")),
            outcome: None,
            instance: instance.into(),
            at: at_ms,
            signature: None,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        // Strings, integers and a serialisable enum: cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(payload: &[u8]) -> Result<RuleStatus, String> {
        serde_json::from_slice(payload).map_err(|e| format!("status is not a status message: {e}"))
    }

    /// The payload, signed with `key` when there is one.
    pub fn encode_signed(&self, key: Option<&SecretKey>) -> Vec<u8> {
        let mut s = self.clone();
        s.signature = None;
        let Some(key) = key else {
            return s.encode();
        };
        let unsigned = s.encode();
        s.signature = Some(key.sign(&auth::status_signing_bytes(&unsigned)));
        s.encode()
    }

    /// Is this status signed by one of `keys` (the engines' status keys)?
    pub fn verify(&self, trust: &Trust) -> Result<Verdict, String> {
        let mut unsigned = self.clone();
        unsigned.signature = None;
        trust.check(
            &auth::status_signing_bytes(&unsigned.encode()),
            self.signature.as_ref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_round_trip_and_reject_bad_ids() {
        let t = Topics::new("plant/a");
        assert_eq!(t.rules_filter(), "plant/a/rules/+");
        assert_eq!(t.rule("r-1"), "plant/a/rules/r-1");
        assert_eq!(t.status("r-1"), "plant/a/status/r-1");
        assert_eq!(t.rule_id_of("plant/a/rules/f7:x.y_z-1"), Ok("f7:x.y_z-1"));
        assert!(t
            .rule_id_of("plant/a/rules/")
            .unwrap_err()
            .contains("1 to 128"));
        assert!(t
            .rule_id_of("plant/a/rules/a b")
            .unwrap_err()
            .contains("' '"));
        assert!(t.rule_id_of("plant/a/rules/é").is_err());
        assert!(t
            .rule_id_of("plant/b/rules/x")
            .unwrap_err()
            .contains("not under plant/a/rules/"));
        assert!(t.rule_id_of("plant/a/status/x").is_err());
        let long = "x".repeat(129);
        assert!(t.rule_id_of(&format!("plant/a/rules/{long}")).is_err());
        assert!(t
            .rule_id_of(&format!("plant/a/rules/{}", &long[..128]))
            .is_ok());
    }

    #[test]
    fn rule_messages_decode_or_say_why_not() {
        assert_eq!(RuleMessage::decode(b""), Ok(None));
        assert_eq!(
            RuleMessage::decode(br##"{"version": 3, "script": "#{}", "author": "me"}"##),
            Ok(Some(RuleMessage {
                version: 3,
                script: "#{}".into(),
                signature: None,
            }))
        );
        let cases: [(&[u8], &str); 8] = [
            (b"\xff\xfe", "not UTF-8"),
            (b"hello", "not JSON"),
            (b"[1]", "an array"),
            (br#"{"script": "x"}"#, "no \"version\""),
            (br#"{"version": -1, "script": "x"}"#, "non-negative integer"),
            (
                br#"{"version": 1.5, "script": "x"}"#,
                "non-negative integer",
            ),
            (br#"{"version": 1}"#, "no \"script\""),
            (
                br#"{"version": 1, "script": 7}"#,
                "must be a string, got a number",
            ),
        ];
        for (payload, want) in cases {
            let err = RuleMessage::decode(payload).unwrap_err();
            assert!(err.contains(want), "{payload:?}: {err}");
        }
    }

    #[test]
    fn rule_message_encodes_to_what_it_decodes_from() {
        let m = RuleMessage {
            version: 9,
            script: "#{ id: \"a\" }\n// \"quoted\"".into(),
            signature: None,
        };
        assert_eq!(RuleMessage::decode(&m.encode()), Ok(Some(m)));
    }

    #[test]
    fn signed_rules_and_deletes_round_trip_and_verify_only_for_their_rule() {
        let key = SecretKey::from_seed([3; 32]);
        let trust = Trust::new(vec![key.public()], false);
        let m = RuleMessage::signed("r1", 4, "#{}".into(), &key);
        let p = RulePayload::decode(&m.encode()).unwrap();
        assert_eq!(p, RulePayload::Upsert(m.clone()));
        assert!(p.check("r1", &trust).is_ok());
        assert!(p.check("r2", &trust).is_err(), "re-targeted");
        let d = DeleteMessage::signed("r1", 4, &key);
        let p = RulePayload::decode(&d.encode()).unwrap();
        assert_eq!(p, RulePayload::Delete(d.clone()));
        assert!(p.check("r1", &trust).is_ok());
        // The upsert's signature on a delete of the same id and version.
        let forged = DeleteMessage {
            version: Some(4),
            signature: m.signature.clone(),
        };
        assert!(RulePayload::Delete(forged).check("r1", &trust).is_err());
        let empty = RulePayload::decode(b"").unwrap();
        assert!(empty
            .check("r1", &trust)
            .unwrap_err()
            .contains("not signed"));
        assert!(empty.check("r1", &Trust::new(vec![], true)).is_ok());
        assert_eq!(DeleteMessage::default().encode(), b"");
        let err = RulePayload::decode(br#"{"version": 1, "delete": 1}"#).unwrap_err();
        assert!(err.contains("must be true"), "{err}");
        let err =
            RulePayload::decode(br#"{"version": 1, "script": "", "signature": 7}"#).unwrap_err();
        assert!(err.contains("signature"), "{err}");
    }

    #[test]
    fn statuses_signed_by_the_engine_verify_and_tampering_shows() {
        let key = SecretKey::from_seed([5; 32]);
        let trust = Trust::new(vec![key.public()], false);
        let s = RuleStatus::rejected("r", Some(2), "bad", "rules-1", 9);
        let signed = RuleStatus::decode(&s.encode_signed(Some(&key))).unwrap();
        assert!(signed.verify(&trust).is_ok());
        let mut lie = signed.clone();
        lie.status = StatusKind::Accepted;
        assert!(lie.verify(&trust).is_err());
        let unsigned = RuleStatus::decode(&s.encode_signed(None)).unwrap();
        assert!(unsigned.verify(&trust).unwrap_err().contains("not signed"));
        let other = SecretKey::from_seed([6; 32]);
        let by_other = RuleStatus::decode(&s.encode_signed(Some(&other))).unwrap();
        assert!(by_other.verify(&trust).unwrap_err().contains("not trusted"));
    }

    #[test]
    fn status_json_is_camel_case_with_the_outcome() {
        let s = RuleStatus::from_outcome(
            ChangeOutcome::Added {
                rule_id: "r".into(),
                version: 3,
            },
            "rules-1",
            1_700_000_000_000,
        );
        let json: serde_json::Value = serde_json::from_slice(&s.encode()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"ruleId": "r", "version": 3, "status": "accepted", "error": null,
                "outcome": {"outcome": "added", "ruleId": "r", "version": 3},
                "instance": "rules-1", "at": 1_700_000_000_000u64})
        );
        assert_eq!(RuleStatus::decode(&s.encode()), Ok(s));
    }

    #[test]
    fn outcomes_map_to_statuses() {
        let kind = |o| RuleStatus::from_outcome(o, "i", 0);
        let s = kind(ChangeOutcome::Updated {
            rule_id: "r".into(),
            from: 1,
            to: 2,
            kept: vec![],
            reset: vec![],
        });
        assert_eq!((s.status, s.version), (StatusKind::Accepted, Some(2)));
        let s = kind(ChangeOutcome::IgnoredStaleVersion {
            rule_id: "r".into(),
            loaded: 4,
            offered: 2,
        });
        assert_eq!((s.status, s.version), (StatusKind::Ignored, Some(2)));
        let s = kind(ChangeOutcome::Deleted {
            rule_id: "r".into(),
            version: 4,
        });
        assert_eq!((s.status, s.version), (StatusKind::Deleted, Some(4)));
        let s = kind(ChangeOutcome::NotFound {
            rule_id: "r".into(),
        });
        assert_eq!((s.status, s.version), (StatusKind::NotFound, None));
        let json = String::from_utf8(s.encode()).unwrap();
        assert!(json.contains(r#""status":"notFound""#), "{json}");

        let r = RuleStatus::rejected("r", Some(5), "line 3: syntax error", "i", 7);
        let json: serde_json::Value = serde_json::from_slice(&r.encode()).unwrap();
        assert_eq!(json["status"], "rejected");
        assert_eq!(json["error"], "line 3: syntax error");
        assert_eq!(json["outcome"], serde_json::Value::Null);
    }
}
