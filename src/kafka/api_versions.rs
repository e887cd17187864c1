//! ApiVersions: which APIs and versions this broker speaks.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};

/// APIs and version ranges served. Versions are capped where a newer one
/// would need state Meridian does not keep (Fetch v13+ addresses topics by id
/// only; Produce v10+ adds leader-change hints).
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    // The older API: the configs given replace the topic's others.
    (ApiKey::AlterConfigs, 0, 2),
    // Idempotent producers; transactional ids are refused (v5 is for
    // transactions only).
    (ApiKey::InitProducerId, 0, 4),
    // Consumer groups (docs/consumers.md). OffsetCommit starts at v2, the
    // first with generations; v0-1 were for ZooKeeper-era clients.
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 7),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 4),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 8),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
];

pub fn supports(api: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|(k, min, max)| *k == api && (*min..=*max).contains(&version))
}

pub fn response() -> ApiVersionsResponse {
    ApiVersionsResponse::default().with_api_keys(
        SUPPORTED
            .iter()
            .map(|(k, min, max)| {
                ApiVersion::default()
                    .with_api_key(*k as i16)
                    .with_min_version(*min)
                    .with_max_version(*max)
            })
            .collect(),
    )
}

/// For a client that asked with a newer ApiVersions than we speak.
pub fn unsupported_version() -> ApiVersionsResponse {
    response().with_error_code(ResponseError::UnsupportedVersion.code())
}
