//! Consumer groups: the classic rebalance protocol ([`state`]), committed
//! offsets as records of an internal topic ([`offsets`]), and the
//! coordinator that serves both ([`coordinator`]).

pub mod coordinator;
pub mod offsets;
pub mod presence;
pub mod state;
