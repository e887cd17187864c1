//! Consensus: the metadata group, with every node of every region as a
//! voter (topics, leases, seals, epochs), and one openraft group per
//! partition with the region's nodes as voters.

pub mod balance;
pub mod groups;
pub mod network;
pub mod prevote;

pub use groups::{Groups, PartitionGroup};
