//! The origin log's pure model, below storage and consensus: the record a
//! producer sends ([`RecordIn`]), the Kafka record encoding ([`records`]),
//! the stored batch format with its header and HLC stamping ([`batch`]),
//! and the idempotent producers' table ([`producers`]). No I/O.

pub mod batch;
pub mod producers;
pub mod record;
pub mod records;
pub mod retention;

pub use record::RecordIn;
