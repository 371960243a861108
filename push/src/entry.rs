//! Entries and pushed streams as they travel from a client to the server.
//!
//! Owns the decoded shape of a push (label-set string + entries), independent of whether
//! it arrived as protobuf or JSON. It does not validate: that is the server's distributor.

/// One log entry: a nanosecond Unix timestamp, the line, and optional structured metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// The log line.
    pub line: String,
    /// Structured metadata (`name`, `value`) pairs, in the order they were sent.
    pub structured_metadata: Vec<(String, String)>,
}

/// One stream of a push request: the label-set string as sent, and its entries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushStream {
    /// The label set as the client wrote it, e.g. `{app="api"}`; parsed by the receiver.
    pub labels: String,
    pub entries: Vec<Entry>,
}

/// A decoded push request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PushRequest {
    pub streams: Vec<PushStream>,
}
