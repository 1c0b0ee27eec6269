//! MQTT control topic: rules in, status out. (Being written.)
