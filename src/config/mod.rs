//! Configuration: the region topology (`regions/*.toml`) and one node's
//! settings (`config/*.toml`).
//!
//! Loading never panics. Every problem is reported with the file, the key and
//! the reason, and all problems of a file are reported at once, so an operator
//! fixes a file in one pass instead of one error per restart.
//!
//! `problems` (reporting), `topology`, `settings` (one struct per section),
//! `validate` (one check per section, and those across sections), `node`
//! (the node's file), `topics` (the topics file).

mod node;
mod problems;
mod settings;
mod topics;
mod topology;
mod validate;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

pub use node::NodeConfig;
pub use problems::{ConfigError, ConfigProblem};
pub use settings::{
    AdminConfig, ControlConfig, GroupsConfig, KafkaConfig, LinkConfig, RaftConfig, RuntimeConfig,
    StorageConfig, TlsConfig, TransportConfig, ADMIN_TOKEN_LEN_MIN, FREE_CHECK_INTERVAL_MS,
    IDLE_TIMEOUT_MS_MAX, TCP_KEEPALIVE_MS_MAX,
};
pub use topics::TopicDecl;
pub use topology::{NodeSpec, RegionSpec, Topology};
pub use validate::RPC_OVERHEAD_BYTES;

pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    }
}
