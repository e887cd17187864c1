//! Where every node of a cluster listens: what `GET /topology` answers, and
//! what `meridian dev` writes to `cluster.json` (with its pids, configs and
//! admin token) for `meridian status`, `drill` and `chaos` to read.

use serde::{Deserialize, Serialize};

/// `cluster.json`: where every node of a dev cluster listens, its pid and
/// its config (read by `meridian status` and `meridian drill`).
#[derive(Serialize, Deserialize)]
pub struct ClusterFile {
    pub regions: Vec<ClusterRegion>,
    /// The nodes' `admin.token` (`meridian dev` makes one per start);
    /// never served by `/topology`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token: Option<String>,
}

#[derive(Serialize, Deserialize)]
pub struct ClusterRegion {
    pub name: String,
    pub nodes: Vec<ClusterNode>,
}

#[derive(Serialize, Deserialize)]
pub struct ClusterNode {
    pub id: u64,
    pub kafka: String,
    pub admin: String,
    pub pid: u32,
    pub config: String,
}
