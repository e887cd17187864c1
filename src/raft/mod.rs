//! Region-local consensus: one openraft group for the region's topics (the
//! meta group) and one per partition, all with the region's nodes as voters.

pub mod groups;
pub mod network;
pub mod types;

pub use groups::{Groups, PartitionGroup};
