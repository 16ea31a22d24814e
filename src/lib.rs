//! labd: a per-lab hardware dispatcher daemon.
//!
//! The library holds everything; the `labd`, `labctl` and `labd-sim` binaries
//! are thin front ends. See `ARCHITECTURE.md` for the map.

pub mod config;
pub mod console;
pub mod device_type;
pub mod error;
pub mod job;
pub mod matcher;
pub mod model;
pub mod power;
pub mod runner;
pub mod signals;
pub mod sim;
pub mod store;
pub mod tftp;
