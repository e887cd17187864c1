//! The Kafka client protocol, decoded with the kafka-protocol crate. One file
//! per API; handlers know nothing of Raft or RocksDB and call the router.

pub mod admission;
pub mod codec;
pub mod decompress;
pub mod log_limit;
pub mod producer_ids;
pub mod queued;
pub mod server;

mod alter;
mod alter_configs;
mod api_versions;
mod create_topics;
mod delete_records;
mod delete_topics;
mod describe_configs;
mod fetch;
mod groups;
mod incremental_alter_configs;
mod list_offsets;
mod metadata;
mod produce;
mod unsupported;

pub use api_versions::SUPPORTED;

use kafka_protocol::error::ResponseError;
use kafka_protocol::protocol::StrBytes;

use crate::command::PartitionError;
use crate::log::producers::Refusal;
use crate::meta::MetaError;
use crate::router::TopicError;

pub(crate) fn partition_error_code(e: &PartitionError) -> i16 {
    match e {
        PartitionError::UnknownTopicOrPartition => ResponseError::UnknownTopicOrPartition.code(),
        PartitionError::NotLeader(_) => ResponseError::NotLeaderOrFollower.code(),
        PartitionError::LeaderNotAvailable => ResponseError::LeaderNotAvailable.code(),
        PartitionError::Timeout => ResponseError::RequestTimedOut.code(),
        PartitionError::Storage(_) => ResponseError::KafkaStorageError.code(),
        PartitionError::NotEnoughReplicas(_) => ResponseError::NotEnoughReplicas.code(),
        PartitionError::Refused(_) => ResponseError::PolicyViolation.code(),
        // Retriable: the client refreshes metadata, which points elsewhere.
        PartitionError::Fenced(_) => ResponseError::NotLeaderOrFollower.code(),
        PartitionError::EpochPending { .. } => ResponseError::LeaderNotAvailable.code(),
        PartitionError::TooLarge { .. } => ResponseError::MessageTooLarge.code(),
        // Retriable (Kafka's answer for a log directory it cannot write).
        PartitionError::DiskFull { .. } => ResponseError::KafkaStorageError.code(),
        PartitionError::Producer(r) => match r {
            Refusal::DuplicateOld => ResponseError::DuplicateSequenceNumber.code(),
            Refusal::OutOfOrder { .. } => ResponseError::OutOfOrderSequenceNumber.code(),
            Refusal::UnknownProducer => ResponseError::UnknownProducerId.code(),
            Refusal::StaleEpoch { .. } => ResponseError::InvalidProducerEpoch.code(),
            // Retriable: the client sends the batch again, unchanged.
            Refusal::Settling { .. } => ResponseError::NotEnoughReplicas.code(),
        },
    }
}

pub(crate) fn topic_error_code(e: &TopicError) -> i16 {
    match e {
        TopicError::Meta(MetaError::TopicExists(_)) => ResponseError::TopicAlreadyExists.code(),
        TopicError::Meta(MetaError::UnknownTopic(_)) => {
            ResponseError::UnknownTopicOrPartition.code()
        }
        TopicError::Meta(MetaError::InvalidName(_)) => ResponseError::InvalidTopicException.code(),
        TopicError::Meta(MetaError::InvalidPartitions(_)) => {
            ResponseError::InvalidPartitions.code()
        }
        TopicError::Meta(MetaError::InvalidConfig { .. }) => ResponseError::InvalidConfig.code(),
        TopicError::Unavailable(_) => ResponseError::RequestTimedOut.code(),
        // A home move refused for now (one under way, a region away).
        TopicError::Meta(MetaError::MoveRefused { .. } | MetaError::InternalTopic(_)) => {
            ResponseError::PolicyViolation.code()
        }
        // Lease and seal commands never come from a topic request.
        TopicError::Meta(
            MetaError::RegionSealed(_) | MetaError::SealRefused(_) | MetaError::StaleEpoch { .. },
        ) => ResponseError::UnknownServerError.code(),
    }
}

pub(crate) fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}
