//! Configuration: `lode serve`'s YAML file, embedded defaults and flag overrides.

pub mod units;
