//! labd: a per-lab hardware dispatcher daemon.
//!
//! The library holds everything; the `labd`, `labctl` and `labd-sim` binaries
//! are thin front ends. See `ARCHITECTURE.md` for the map.

pub mod board;
pub mod boots;
pub mod cache;
pub mod child;
pub mod client;
pub mod config;
pub mod console;
pub mod daemon;
pub mod deploy;
pub mod device_type;
pub mod driver;
pub mod error;
pub mod faults;
pub mod git;
pub mod git_url;
pub mod job;
pub mod lab;
pub mod lava_device;
pub mod lava_worker;
pub mod local_file;
pub mod matcher;
pub mod metrics;
pub mod model;
pub mod nfs;
pub mod overlay;
pub mod overlay_http;
pub mod power;
pub mod protocol;
pub mod pty;
pub mod qemu_args;
pub mod runner;
pub mod secrets;
pub mod server;
pub mod signals;
pub mod sim_control;
pub mod store;
pub mod systemd;
pub mod tftp;
