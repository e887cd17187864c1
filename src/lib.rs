//! Meridian: a geo-replicated, Kafka-compatible message broker.
//!
//! Modules follow the data flow of docs/architecture.md, bottom-up: shared
//! vocabulary ([`ids`], [`hlc`]), the metadata group's state and rules
//! ([`meta`]), the origin log's model ([`log`]) and what Raft groups agree
//! on ([`command`]); then [`storage`] (RocksDB, the Raft log, the state
//! machines), [`raft`] (the groups), [`link`] (copies between regions),
//! [`control`] (leases, failover, failback) and [`router`] (where a
//! request goes), with [`rpc`] dispatching node-to-node requests above them;
//! [`group`] and [`kafka`] face clients, [`admin`] operators, and [`node`]
//! ties one process together. Outside the broker: [`client`] is the crate's
//! Kafka client, with a group member with retry chains and dead-letter
//! topics ([`client::consumer`]); [`ops`] holds the tools that drive
//! clusters (`dev`, `bench`, and `drill` and `chaos`, which fail regions and
//! check the invariants). `tests/layers.rs` keeps every import pointing
//! down this order.
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
