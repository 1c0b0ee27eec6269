//! The simulated Modbus TCP PLC (`tests/sim/modbus_plc.py`, pymodbus) and its control
//! channel (a line-JSON TCP port: set and read values, inject exceptions, count reads).

use super::sim_control::{deref_sim, Sim};
use serde_json::{json, Value as Json};
use std::path::Path;
use std::time::Duration;

/// Register areas, named as in the agent's config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Area {
    Coil,
    DiscreteInput,
    InputRegister,
    HoldingRegister,
}

impl Area {
    pub fn as_str(self) -> &'static str {
        match self {
            Area::Coil => "coil",
            Area::DiscreteInput => "discrete_input",
            Area::InputRegister => "input_register",
            Area::HoldingRegister => "holding_register",
        }
    }
}

/// One value to write into the PLC. `dtype` is the agent's type name (`f32`, `u64`...).
#[derive(Debug, Clone)]
pub struct SimWrite {
    pub area: Area,
    pub address: u16,
    pub dtype: &'static str,
    pub value: Json,
    pub byte_order: &'static str,
    pub word_order: &'static str,
}

/// Builds a register write in big-endian byte and word order.
pub fn reg(address: u16, dtype: &'static str, value: impl Into<Json>) -> SimWrite {
    SimWrite {
        area: Area::HoldingRegister,
        address,
        dtype,
        value: value.into(),
        byte_order: "big",
        word_order: "big",
    }
}

/// Builds a coil write.
pub fn coil(address: u16, value: bool) -> SimWrite {
    SimWrite {
        area: Area::Coil,
        address,
        dtype: "bool",
        value: Json::Bool(value),
        byte_order: "big",
        word_order: "big",
    }
}

impl SimWrite {
    pub fn area(mut self, area: Area) -> Self {
        self.area = area;
        self
    }
    pub fn orders(mut self, byte_order: &'static str, word_order: &'static str) -> Self {
        self.byte_order = byte_order;
        self.word_order = word_order;
        self
    }
    fn to_json(&self) -> Json {
        json!({"area": self.area.as_str(), "address": self.address, "type": self.dtype,
               "value": self.value, "byte_order": self.byte_order, "word_order": self.word_order})
    }
}

/// How the simulator behaves.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub unit_id: u8,
    /// `static` (values only change on request) or `line` (a running line, for demos).
    pub mode: &'static str,
    /// Port to listen on; `None` picks a free one.
    pub port: Option<u16>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            unit_id: 1,
            mode: "static",
            port: None,
        }
    }
}

/// A running simulated PLC on 127.0.0.1 (killed when dropped).
pub struct ModbusSim {
    sim: Sim,
}
deref_sim!(ModbusSim);

impl ModbusSim {
    /// Starts the simulator and waits until its control port answers a ping.
    #[track_caller]
    pub fn start(opts: SimOptions, log_dir: &Path) -> ModbusSim {
        let args = ["--unit", &opts.unit_id.to_string(), "--mode", opts.mode];
        ModbusSim {
            sim: Sim::start(
                "modbus sim",
                "modbus_plc",
                opts.port,
                args.iter().map(Into::into).collect(),
                Duration::from_secs(30),
                log_dir,
            ),
        }
    }

    /// `127.0.0.1:PORT`, as the agent's `address` key wants it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port())
    }

    /// Writes all values at once: no poll of the agent sees half of them.
    #[track_caller]
    pub fn set(&mut self, writes: &[SimWrite]) {
        let writes: Vec<Json> = writes.iter().map(SimWrite::to_json).collect();
        self.request(json!({"op": "set", "writes": writes}));
    }

    /// Reads a value back (registers decoded as `dtype`).
    #[track_caller]
    pub fn get(&mut self, area: Area, address: u16, dtype: &str) -> Json {
        self.request(json!({"op": "get", "area": area.as_str(), "address": address, "type": dtype}))
            ["value"]
            .clone()
    }

    /// Makes reads touching `address..address+count` of `area` answer Modbus exception `code`.
    #[track_caller]
    pub fn fail(&mut self, area: Area, address: u16, count: u16, code: u8) {
        self.request(
            json!({"op": "fail", "area": area.as_str(), "address": address,
                            "count": count, "code": code}),
        );
    }

    #[track_caller]
    pub fn clear_faults(&mut self) {
        self.request(json!({"op": "clear_faults"}));
    }

    /// Read requests served so far, per area (`{"holding_register": 12, ...}`).
    #[track_caller]
    pub fn reads(&mut self) -> Json {
        self.request(json!({"op": "stats"}))["reads"].clone()
    }

    /// Total read requests served.
    #[track_caller]
    pub fn total_reads(&mut self) -> u64 {
        let r = self.reads();
        r.as_object()
            .map(|m| m.values().filter_map(Json::as_u64).sum())
            .unwrap_or(0)
    }
}
