//! Tools that drive a cluster from outside, over its ports: `meridian dev`
//! (a multi-region cluster on loopback), `meridian bench`, `meridian drill`
//! (fail a region and back under a verification workload) and
//! `meridian chaos` (fault scenarios). The broker's own modules never
//! import them (tests/layers.rs).

pub mod bench;
pub mod chaos;
pub mod dev;
pub mod drill;
