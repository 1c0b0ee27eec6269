//! What the rules need of a data point, and all the reorder buffer keeps of it: the
//! sender's metadata is used by the watermark on arrival and dropped there, so a
//! buffered point is a third of the size.

use linewatch_schemas::{DataPoint, Quality, Value};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reading {
    /// Event time, ms since the Unix epoch.
    pub timestamp: u64,
    pub equipment_id: String,
    pub tag: String,
    pub value: Value,
    pub quality: Quality,
}

impl From<DataPoint> for Reading {
    fn from(p: DataPoint) -> Self {
        Reading {
            timestamp: p.timestamp,
            equipment_id: p.equipment_id,
            tag: p.tag,
            value: p.value,
            quality: p.quality,
        }
    }
}

impl From<&DataPoint> for Reading {
    fn from(p: &DataPoint) -> Self {
        Reading {
            timestamp: p.timestamp,
            equipment_id: p.equipment_id.clone(),
            tag: p.tag.clone(),
            value: p.value.clone(),
            quality: p.quality,
        }
    }
}
