//! The global view of a partition: the origin logs that a region holds,
//! merged in `(hlc, origin)` order up to the minimum closed timestamp of the
//! origins that write the topic (invariant 4). Positions in the view are the
//! partition's Kafka offsets, so an offset names the same record in every
//! region.
//!
//! [`merge`] is the pure rule; the partition state machine applies it after
//! every commit and stores the resulting runs (`storage` column family
//! `view`), so every replica of every region computes the same view.

pub mod merge;

pub use merge::{merge, Run, Segment};
