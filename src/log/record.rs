//! One record as a producer sent it, before the log gives it an offset and
//! a timestamp.

use serde::{Deserialize, Serialize};

/// One record as a producer sent it. Timestamps are not kept: the record's
/// timestamp is its HLC, fixed when it is committed. `Bytes` lets the
/// leader refer to the request's buffer instead of copying it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordIn {
    pub key: Option<bytes::Bytes>,
    pub value: Option<bytes::Bytes>,
    pub headers: Vec<(String, Option<bytes::Bytes>)>,
}

impl RecordIn {
    /// The parts of a decoded Kafka record that Meridian keeps.
    pub fn from_kafka(r: kafka_protocol::records::Record) -> Self {
        RecordIn {
            key: r.key,
            value: r.value,
            headers: r
                .headers
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }
}
