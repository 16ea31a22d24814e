//! labd: a per-lab hardware dispatcher daemon.
//!
//! The library holds everything; the `labd`, `labctl` and `labd-sim` binaries
//! are thin front ends. See `ARCHITECTURE.md` for the map.

pub mod device_type;
pub mod error;
pub mod job;
pub mod matcher;
pub mod model;
pub mod signals;
