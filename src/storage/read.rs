//! Reads committed records of a partition straight from storage: stored
//! batches of an origin log, one record, and the global view by position
//! or by timestamp.

use super::{Db, DbError, LogKey, CF_HLC_INDEX, CF_RECORDS, CF_VIEW, CF_VIEW_HLC};
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

/// The HLC of the record at view position `pos`, if the view holds it.
pub fn view_hlc_at(db: &Db, group: GroupId, pos: u64) -> Result<Option<u64>, DbError> {
    let Some((_, v)) = db.last_at_or_before(CF_VIEW, &group.to_be_bytes(), pos)? else {
        return Ok(None);
    };
    let run: Run = bincode::deserialize(&v).map_err(|e| corrupt(e.to_string()))?;
    Ok((pos < run.end()).then(|| run.first_hlc + (pos - run.pos)))
}

/// Where the removal of `log`'s stored batches may end: below the first
/// batch with a record at or after `hlc`, below `limit` (what is merged
/// and what every other region holds), in whole batches. Returns that
/// offset, if it lies past `from` (where the log is stored from now), and
/// the end of the HLC index range to remove: just past the last removed
/// batch, so that no entry of a batch kept (or being written) goes.
pub fn trim_end(
    db: &Db,
    log: LogKey,
    next_offset: u64,
    from: u64,
    hlc: u64,
    limit: u64,
) -> Result<Option<(u64, Vec<u8>)>, DbError> {
    let by_hlc = match db.first_at_or_after(CF_HLC_INDEX, &log.prefix(), hlc)? {
        Some((_, v)) => index_base(&v)?,
        None => next_offset,
    };
    let mut upper = by_hlc.min(limit);
    if let Some((h, _, _)) = record_at(db, log, upper)? {
        upper = h.base_offset;
    }
    if upper <= from {
        return Ok(None);
    }
    let Some((last, _, _)) = record_at(db, log, upper - 1)? else {
        return Err(DbError::Corrupt {
            cf: CF_RECORDS,
            reason: format!(
                "no stored batch holds offset {} of a log stored from {from}",
                upper - 1
            ),
        });
    };
    Ok(Some((upper, log.key(last.last_hlc().saturating_add(1)))))
}

/// `log`'s stored batches newest first, as (HLC of the last record, stored
/// bytes), from the HLC index. Stops at the first read error.
pub fn batch_sizes(db: &Db, log: LogKey) -> impl Iterator<Item = (u64, u64)> + '_ {
    db.range_rev_owned(CF_HLC_INDEX, log.prefix().to_vec())
        .map_while(move |r| {
            let (last_hlc, v) = r.ok()?;
            let bytes = match v.get(8..12) {
                Some(b) => u32::from_be_bytes(b.try_into().ok()?) as u64,
                // Written before sizes were indexed: ask the batch.
                None => record_at(db, log, index_base(&v).ok()?).ok()??.1 as u64,
            };
            Some((last_hlc, bytes))
        })
}

/// The base offset an HLC index entry points to (its first 8 bytes).
pub fn index_base(v: &[u8]) -> Result<u64, DbError> {
    v.get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| DbError::Corrupt {
            cf: CF_HLC_INDEX,
            reason: format!("HLC index value of {} bytes", v.len()),
        })
}

fn corrupt(reason: String) -> DbError {
    DbError::Corrupt {
        cf: CF_RECORDS,
        reason,
    }
}
