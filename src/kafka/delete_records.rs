//! DeleteRecords (`AdminClient.delete_records`, `kafka-delete-records`):
//! moves partitions' log starts in every region. Each offset is checked
//! against this region's high watermark by the partition's leader here
//! (-1: the high watermark), then all of a topic's new starts commit as one
//! command of the metadata group, which every region applies. Readers in a
//! region see the new start as soon as its metadata applies it (up to that
//! region's high watermark); the records go from storage at the partition
//! leader's next trim (`control::retention`), which it does at once.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use super::create_topics::timeout_of;
use super::{partition_error_code, topic_error_code};
use crate::router::Router;

/// The request's offset for "up to the high watermark".
const HIGH_WATERMARK: i64 = -1;

/// Where a requested offset moves the log start, given the partition's
/// start and high watermark here: `None` when it lies out of range.
pub fn new_start(offset: i64, start: u64, hw: u64) -> Option<u64> {
    let wanted = match offset {
        HIGH_WATERMARK => hw,
        o => u64::try_from(o).ok().filter(|o| *o <= hw)?,
    };
    Some(wanted.max(start))
}

pub async fn handle(r: &Router, req: DeleteRecordsRequest) -> DeleteRecordsResponse {
    let timeout = timeout_of(req.timeout_ms);
    let mut topics = Vec::new();
    for t in req.topics {
        let topic = t.name.0.to_string();
        let mut results = Vec::new();
        let mut starts = Vec::new();
        for p in &t.partitions {
            let res = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            let extent = r
                .check_readable(&topic, p.partition_index)
                .and_then(|()| r.view_extent(&topic, p.partition_index));
            match extent {
                Err(e) => results.push(res.with_error_code(partition_error_code(&e))),
                Ok((start, hw, _)) => match new_start(p.offset, start, hw) {
                    None => {
                        results.push(res.with_error_code(ResponseError::OffsetOutOfRange.code()))
                    }
                    Some(s) => {
                        starts.push((p.partition_index as u32, s));
                        results.push(res);
                    }
                },
            }
        }
        let outcome = if starts.is_empty() {
            Ok(())
        } else {
            r.delete_records(&topic, starts.clone(), timeout).await
        };
        for res in results.iter_mut().filter(|res| res.error_code == 0) {
            match &outcome {
                Ok(()) => {
                    res.low_watermark = r
                        .log_start(&topic, res.partition_index)
                        .map_or(-1, |s| s as i64)
                }
                Err(e) => res.error_code = topic_error_code(e),
            }
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(results),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_move_the_start_within_the_log_only() {
        assert_eq!(new_start(-1, 2, 10), Some(10), "-1: the high watermark");
        assert_eq!(new_start(5, 2, 10), Some(5));
        assert_eq!(new_start(10, 2, 10), Some(10));
        assert_eq!(new_start(1, 2, 10), Some(2), "never back");
        assert_eq!(new_start(11, 2, 10), None, "past the high watermark");
        assert_eq!(new_start(-2, 2, 10), None);
    }
}
