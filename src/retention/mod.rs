//! Retention: the compactor loop that deletes expired data.
