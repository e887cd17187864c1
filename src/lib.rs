//! Meridian: a geo-replicated, Kafka-compatible message broker.
//!
//! Modules follow the data flow of docs/architecture.md: a Kafka request is
//! decoded in [`kafka`], routed by [`router`] to a partition's Raft group in
//! [`raft`], committed through [`storage`] on a majority of the region's
//! nodes, which talk over [`transport`]; [`link`] copies origin logs between
//! regions, [`view`] merges them, and [`control`] keeps the regions' write
//! leases. [`admin`] serves operators; [`node`]
//! ties one process together; [`dev`], [`client`] and [`bench`] serve the CLI,
//! [`consumer`] is a group member with retry chains and dead-letter topics,
//! [`drill`] and [`chaos`] fail regions and check the invariants.
#![forbid(unsafe_code)]

pub mod admin;
pub mod control;
pub mod group;
pub mod kafka;
pub mod link;
pub mod raft;
pub mod router;
pub mod storage;
pub mod transport;
pub mod view;

pub mod chaos;
pub mod drill;

pub mod bench;
pub mod client;
pub mod config;
pub mod consumer;
pub mod dev;
pub mod hlc;
pub mod ids;
pub mod metrics;
pub mod node;
pub mod supervise;
pub mod topic;
