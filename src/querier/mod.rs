//! Querier: plans and runs LogQL over heads and segments.
