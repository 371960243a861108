//! Ingester: per-tenant, per-stream head blocks, chunk cutting and flushing.
