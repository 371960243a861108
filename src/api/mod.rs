//! HTTP API: Loki's routes, request decoding and response encoding.
//!
//! The only module that knows HTTP. It maps every error kind to a status in one place.

pub mod params;
pub mod query;
pub mod tail;
