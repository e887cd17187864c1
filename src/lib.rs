//! Meridian: a geo-replicated, Kafka-compatible message broker.
//!
//! Modules follow the data flow of docs/architecture.md: a Kafka request is
//! decoded in [`kafka`], routed by [`router`] to a partition's Raft group in
//! [`raft`], committed through [`storage`] on a majority of the region's
//! nodes, which talk over [`transport`]; [`link`] copies origin logs between
//! regions, [`view`] merges them, and [`control`] keeps the regions' write
//! leases. [`admin`] serves operators; [`node`] ties one process together.
//! Outside the broker: [`client`] is the crate's Kafka client, with a group
//! member with retry chains and dead-letter topics ([`client::consumer`]);
//! [`ops`] holds the tools that drive clusters (`dev`, `bench`, and `drill`
//! and `chaos`, which fail regions and check the invariants).
#![forbid(unsafe_code)]

pub mod admin;
pub mod control;
pub mod group;
pub mod kafka;
pub mod link;
pub mod raft;
pub mod router;
pub mod rpc;
pub mod storage;
pub mod transport;
pub mod view;

pub mod client;
pub mod ops;

pub mod command;
pub mod config;
pub mod hlc;
pub mod ids;
pub mod log;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod supervise;
