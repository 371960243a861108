//! Lode's server: a log aggregation and query service that speaks Loki's protocols.
//!
//! See ARCHITECTURE.md for the map of modules and the invariants they keep.

pub mod api;
pub mod chunk;
pub mod cli;
pub mod clock;
pub mod compaction;
pub mod config;
pub mod distributor;
pub mod index;
pub mod ingester;
pub mod limits;
pub mod metrics;
pub mod querier;
pub mod retention;
pub mod ruler;
pub mod server;
pub mod storage;
pub mod tenant;
#[cfg(test)]
mod testutil;
pub mod wal;

pub use tenant::TenantId;
