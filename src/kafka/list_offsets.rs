//! ListOffsets: earliest (-2: the log start), latest (-1), max timestamp
//! (-3), or the first offset at or after a timestamp that is still held,
//! through the HLC index.

use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use super::partition_error_code;
use crate::command::PartitionError;
use crate::router::Router;

const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
const MAX_TIMESTAMP: i64 = -3;

fn lookup(r: &Router, topic: &str, partition: i32, ts: i64) -> Result<(i64, i64), PartitionError> {
    r.check_readable(topic, partition)?;
    let (start, hw, _) = r.view_extent(topic, partition)?;
    let (start, hw) = (start as i64, hw as i64);
    Ok(match ts {
        LATEST => (hw, -1),
        EARLIEST => (start, -1),
        MAX_TIMESTAMP if hw == start => (-1, -1),
        MAX_TIMESTAMP => {
            let g = r.partition(topic, partition)?;
            let last_hlc = g.progress.borrow().view_last_hlc;
            (hw - 1, crate::hlc::wall_ms(last_hlc))
        }
        ts if ts < 0 => (-1, -1),
        ts => match r.offset_for_time(topic, partition, ts)? {
            Some((offset, hlc)) => (offset as i64, crate::hlc::wall_ms(hlc)),
            None => (-1, -1),
        },
    })
}

pub fn handle(r: &Router, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = t.name.0.to_string();
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    let resp = ListOffsetsPartitionResponse::default()
                        .with_partition_index(p.partition_index)
                        .with_leader_epoch(-1);
                    match lookup(r, &topic, p.partition_index, p.timestamp) {
                        Ok((offset, ts)) => resp.with_offset(offset).with_timestamp(ts),
                        Err(e) => resp
                            .with_offset(-1)
                            .with_timestamp(-1)
                            .with_error_code(partition_error_code(&e)),
                    }
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}
