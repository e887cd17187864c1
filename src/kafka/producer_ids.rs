//! InitProducerId for idempotent producers: a producer id unique across
//! every region, given out without asking any other node (the allocator:
//! `storage::producer_ids`).

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::storage::producer_ids::ProducerIds;

/// Answers InitProducerId. Idempotent producers (no transactional id) get
/// a new id at epoch 0, as Kafka gives them, also when they ask to bump an
/// existing one; transactional ids are not served.
pub fn handle(ids: &ProducerIds, req: InitProducerIdRequest) -> InitProducerIdResponse {
    let refused = |code: i16| {
        InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
    };
    if req.transactional_id.as_ref().is_some_and(|t| !t.is_empty()) {
        tracing::info!(
            transactional_id = ?req.transactional_id,
            "refusing InitProducerId for a transactional id: transactions are not supported"
        );
        return refused(ResponseError::UnsupportedVersion.code());
    }
    match ids.next() {
        Ok(id) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Err(e) => {
            tracing::error!(error = %e, "cannot give out a producer id");
            refused(ResponseError::KafkaStorageError.code())
        }
    }
}
