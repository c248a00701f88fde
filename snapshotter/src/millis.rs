//! Durations in serialised progress events, as whole milliseconds (fields named `*_ms`): a plain
//! integer any JSON reader takes without a unit parser. Use with `#[serde(with = "...")]`;
//! sub-millisecond parts are dropped.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    u64::deserialize(d).map(Duration::from_millis)
}
