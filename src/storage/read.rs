//! Reads committed records of a partition straight from storage: stored
//! batches of an origin log, one record, and the global view by position
//! or by timestamp.

use super::{Db, DbError, LogKey, CF_RECORDS, CF_VIEW, CF_VIEW_HLC};
use crate::ids::GroupId;
use crate::log::batch::{self, BatchHeader};
use crate::view::Run;

/// Stored batches (header and Kafka batch, as the origin stored them) of
/// `log` from the one holding `from` up to `hw`, at most about
/// `max_bytes` but always at least one batch, so a large batch cannot
/// stall a reader.
pub fn stored(
    db: &Db,
    log: LogKey,
    from: u64,
    hw: u64,
    max_bytes: usize,
) -> Result<Vec<bytes::Bytes>, DbError> {
    let mut out = Vec::new();
    if from >= hw {
        return Ok(out);
    }
    let prefix = log.prefix();
    let start = match db.last_at_or_before(CF_RECORDS, &prefix, from)? {
        Some((base, v)) => {
            let (h, _) = batch::decode(&v).map_err(corrupt)?;
            if h.end_offset() > from {
                base
            } else {
                from
            }
        }
        None => from,
    };
    let mut size = 0usize;
    for r in db.range(CF_RECORDS, &prefix, start, hw) {
        let (_, v) = r?;
        if !out.is_empty() && size + v.len() > max_bytes {
            break;
        }
        size += v.len();
        out.push(bytes::Bytes::from(v.into_vec()));
    }
    Ok(out)
}

/// The stored batch of `log` that holds record `offset`: its header,
/// its stored size in bytes, and that record's HLC; `None` at or past
/// the log's end.
pub fn record_at(
    db: &Db,
    log: LogKey,
    offset: u64,
) -> Result<Option<(BatchHeader, usize, u64)>, DbError> {
    let Some((_, v)) = db.last_at_or_before(CF_RECORDS, &log.prefix(), offset)? else {
        return Ok(None);
    };
    let (h, _) = batch::decode(&v).map_err(corrupt)?;
    Ok((h.end_offset() > offset).then(|| (h, v.len(), h.first_hlc + (offset - h.base_offset))))
}

/// Kafka record batches of the global view of `group` from position
/// `from` up to `view_next`, at most about `max_bytes` (at least one
/// batch). Offsets in them are view positions. A batch that lies whole
/// inside one run of the view keeps its bytes with a new base offset;
/// part of a batch is encoded again.
pub fn view(
    db: &Db,
    group: GroupId,
    from: u64,
    view_next: u64,
    max_bytes: usize,
) -> Result<Vec<bytes::Bytes>, DbError> {
    let mut out = Vec::new();
    if from >= view_next {
        return Ok(out);
    }
    let prefix = group.to_be_bytes();
    let start = db
        .last_at_or_before(CF_VIEW, &prefix, from)?
        .map_or(from, |(pos, _)| pos);
    let mut size = 0usize;
    for r in db.range(CF_VIEW, &prefix, start, view_next) {
        let (_, v) = r?;
        let run: Run = bincode::deserialize(&v).map_err(|e| corrupt(e.to_string()))?;
        let lo = from.max(run.pos);
        if lo >= run.end() {
            continue;
        }
        // Origin offsets of the run still wanted.
        let (o_lo, o_hi) = (run.offset + (lo - run.pos), run.offset + run.count as u64);
        let log = LogKey {
            group,
            origin: run.log.origin,
            epoch: run.log.epoch,
        };
        let budget = max_bytes.saturating_sub(size).max(1);
        let mut reached = o_lo;
        for stored in stored(db, log, o_lo, o_hi, budget)? {
            let (h, kafka) = batch::decode(&stored).map_err(corrupt)?;
            let (a, b) = (h.base_offset.max(o_lo), h.end_offset().min(o_hi));
            if a >= b {
                continue;
            }
            let pos = run.pos + (a - run.offset);
            let piece = if a == h.base_offset && b == h.end_offset() {
                batch::with_base_offset(kafka, pos)
            } else {
                batch::reslice(h, kafka, a, b, pos).map_err(corrupt)?
            };
            if !out.is_empty() && size + piece.len() > max_bytes {
                return Ok(out);
            }
            size += piece.len();
            out.push(piece);
            reached = b;
        }
        if reached < o_hi {
            break; // out of budget inside this run
        }
    }
    Ok(out)
}

/// View position and HLC of the first record of the view with an HLC at
/// or above `hlc`, if the view holds one.
pub fn view_offset_for_hlc(
    db: &Db,
    group: GroupId,
    hlc: u64,
    view_next: u64,
) -> Result<Option<(u64, u64)>, DbError> {
    let prefix = group.to_be_bytes();
    // The run holding `hlc` starts at or before it; runs are HLC-sorted.
    let start = match db.last_at_or_before(CF_VIEW_HLC, &prefix, hlc)? {
        Some((_, pos)) => u64::from_be_bytes(
            pos.as_ref()
                .try_into()
                .map_err(|_| corrupt("view hlc index value".into()))?,
        ),
        None => 0,
    };
    for r in db.range(CF_VIEW, &prefix, start, view_next) {
        let (_, v) = r?;
        let run: Run = bincode::deserialize(&v).map_err(|e| corrupt(e.to_string()))?;
        let last = run.first_hlc + run.count as u64 - 1;
        if last >= hlc {
            let i = hlc.saturating_sub(run.first_hlc);
            return Ok(Some((run.pos + i, run.first_hlc + i)));
        }
    }
    Ok(None)
}

fn corrupt(reason: String) -> DbError {
    DbError::Corrupt {
        cf: CF_RECORDS,
        reason,
    }
}
