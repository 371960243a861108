//! The source trait: how the engine asks a store for streams, and an in-memory store.
//!
//! Owns the contract between the query engine and whatever holds log data. A request
//! names the matchers, a `[start, end)` nanosecond range, a direction and the query's
//! line filters (a hint: a store may skip blocks that cannot match, but the engine
//! re-applies every filter, so ignoring the hint is always correct). A store answers
//! with one [`StreamData`] per matching stream whose entries come in *batches*, so a
//! store can decode blocks lazily and share decoded blocks (`Arc`) with a cache.
//! It does not own how stores index or decode anything.

use std::sync::Arc;

use lode_push::{Entry, LabelSet};

use super::sample_cache::{BlockOrigin, CachedSamples, SampleCache, SampleKey};
use crate::syntax::ast::LineFilter;
use crate::Matcher;

/// Time order in which entries are wanted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Oldest first.
    Forward,
    /// Newest first (Loki's default for log queries).
    #[default]
    Backward,
}

/// What the engine asks a source for.
#[derive(Clone, Copy, Debug)]
pub struct SelectRequest<'a> {
    /// All must hold for a stream to be selected.
    pub matchers: &'a [Matcher],
    /// Inclusive start, nanoseconds since the Unix epoch.
    pub start_ns: i64,
    /// Exclusive end, nanoseconds since the Unix epoch.
    pub end_ns: i64,
    /// The order in which batches must come.
    pub direction: Direction,
    /// The query's leading line filters, for block skipping; may be ignored.
    pub line_filters: &'a [LineFilter],
    /// `Some(edges)` (ascending, at least two): the engine only counts lines and line
    /// bytes per structured-metadata set, and of an entry's timestamp it only needs to
    /// know which span `(edges[i], edges[i + 1]]` holds it (every window of the query is
    /// a union of such spans; entries outside `(first, last]` count nowhere). A store may
    /// then hand any of a stream's entries as [`BlockCount`]s per span and metadata set
    /// instead of the entries themselves, when no other piece of the stream can hold
    /// copies of them (copies are de-duplicated only when read).
    pub count_edges: Option<&'a [i64]>,
    /// The engine only aggregates what it reads (samples are sorted by time before use):
    /// a stream's batches may then come in any order, and a store may hand stored blocks
    /// that no other piece can hold copies of whole and unmerged, each with its
    /// [`EntryBatch::origin`].
    pub any_order: bool,
    /// Set by a range aggregation that remembers whole blocks' samples in the source's
    /// [`SampleCache`] under this key: for a whole block (one that would carry an
    /// [`EntryBatch::origin`]) whose samples [`SampleCache::lookup`] finds, a store may
    /// hand a batch of those samples ([`EntryBatch::from_samples`]) instead of reading the
    /// block; and since the samples of every block it does read are cached, it need not
    /// keep those blocks' decoded entries for later.
    pub samples: Option<&'a SampleKey>,
}

/// Lines and line bytes of entries carrying one structured-metadata set in one span of
/// [`SelectRequest::count_edges`], given instead of the entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockCount {
    /// A timestamp inside the span (every counted entry lies in the same windows).
    pub timestamp_ns: i64,
    pub metadata: Vec<(String, String)>,
    pub lines: u64,
    pub bytes: u64,
}

/// A substring a line must contain, possibly ignoring ASCII case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Needle {
    pub text: String,
    pub ignore_ascii_case: bool,
}

/// The substrings a line must contain to pass `filters` (leading line filters), as
/// groups of alternatives: a line passes only if, for every group, it contains one of
/// the group's needles (`|= "a" or "b"` is one group of two). `|=` literals count as
/// they are; a `|~` regex counts through the longest literal all its matches contain
/// (at least 3 bytes; `(?i)` + a plain literal is found ignoring ASCII case). Other
/// filters add no group. A store may skip a block holding no needle of some group.
pub fn required_substrings(filters: &[LineFilter]) -> Vec<Vec<Needle>> {
    use crate::syntax::ast::{LineFilterOp, LineFilterValue};
    filters
        .iter()
        .filter(|f| !f.values.is_empty())
        .filter_map(|f| {
            f.values
                .iter()
                .map(|v| match (f.op, v) {
                    (LineFilterOp::Contains, LineFilterValue::Literal(s)) if !s.is_empty() => {
                        Some(Needle {
                            text: s.clone(),
                            ignore_ascii_case: false,
                        })
                    }
                    (LineFilterOp::Match, LineFilterValue::Literal(s)) => {
                        crate::log::line_filter::regex_required_literal(s, 3).map(
                            |(text, ignore_ascii_case)| Needle {
                                text,
                                ignore_ascii_case,
                            },
                        )
                    }
                    _ => None,
                })
                .collect::<Option<Vec<Needle>>>()
        })
        .collect()
}

/// A contiguous run of one stream's entries, ascending by timestamp, shared with the
/// store's cache: the entries are `entries[start..end]`.
#[derive(Clone, Debug)]
pub struct EntryBatch {
    pub entries: Arc<Vec<Entry>>,
    pub start: usize,
    pub end: usize,
    /// Set when the batch is a whole immutable block (every entry of it, or every entry
    /// that can pass the request's line filters): the engine may then remember what its
    /// pipeline made of it (see [`SampleCache`]).
    pub origin: Option<BlockOrigin>,
    /// Set (with no entries, and `origin` set) when the store found the samples the
    /// request's [`SelectRequest::samples`] extraction made of the whole block `origin`
    /// and did not read the block.
    pub cached: Option<CachedSamples>,
}

impl EntryBatch {
    /// A batch covering a whole vector.
    pub fn new(entries: Arc<Vec<Entry>>) -> Self {
        let end = entries.len();
        EntryBatch {
            entries,
            start: 0,
            end,
            origin: None,
            cached: None,
        }
    }

    /// A batch standing for the whole block `origin`, unread: its samples under the
    /// request's extraction, as [`SampleCache::lookup`] found them.
    pub fn from_samples(origin: BlockOrigin, samples: CachedSamples) -> Self {
        EntryBatch {
            entries: Arc::new(Vec::new()),
            start: 0,
            end: 0,
            origin: Some(origin),
            cached: Some(samples),
        }
    }

    /// The batch's entries, ascending by timestamp.
    pub fn as_slice(&self) -> &[Entry] {
        self.entries.get(self.start..self.end).unwrap_or_default()
    }
}

/// A store failure, passed through to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reading streams failed: {message}")]
pub struct SourceError {
    pub message: String,
}

/// Batches of one stream. For [`Direction::Forward`] batches come oldest first, for
/// [`Direction::Backward`] newest first (in any order under
/// [`SelectRequest::any_order`]); entries inside a batch are always ascending.
/// Entries outside the requested range may appear; the engine drops them.
pub type BatchIter = Box<dyn Iterator<Item = Result<EntryBatch, SourceError>> + Send>;

/// One selected stream.
pub struct StreamData {
    pub labels: LabelSet,
    pub batches: BatchIter,
    /// Entries counted instead of read (only when the request had `count_edges`).
    pub counts: Vec<BlockCount>,
}

impl std::fmt::Debug for StreamData {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamData")
            .field("labels", &self.labels)
            .finish_non_exhaustive()
    }
}

/// Where the engine reads log data from. Implemented by the server's querier and by
/// [`InMemorySource`].
pub trait LogSource {
    /// The streams matching `req.matchers` that may hold entries in the range.
    fn select(&self, req: &SelectRequest<'_>) -> Result<Vec<StreamData>, SourceError>;

    /// Where metric queries remember the samples of batches that carry a
    /// [`BlockOrigin`]; none by default.
    fn sample_cache(&self) -> Option<&SampleCache> {
        None
    }
}

/// Streams held in memory, for tests, benches and the ruler's unit tests.
#[derive(Clone, Debug, Default)]
pub struct InMemorySource {
    streams: Vec<(LabelSet, Arc<Vec<Entry>>)>,
}

// Entries per batch: big enough to amortise the iterator, small enough to model blocks.
const BATCH_SIZE: usize = 4096;

impl InMemorySource {
    /// An empty source.
    pub fn new() -> Self {
        InMemorySource::default()
    }

    /// Adds entries to the stream `labels` (created if new), keeping time order.
    pub fn push(&mut self, labels: LabelSet, entries: impl IntoIterator<Item = Entry>) {
        let idx = match self.streams.iter().position(|(l, _)| *l == labels) {
            Some(i) => i,
            None => {
                self.streams.push((labels, Arc::new(Vec::new())));
                self.streams.len() - 1
            }
        };
        if let Some((_, existing)) = self.streams.get_mut(idx) {
            let v = Arc::make_mut(existing);
            v.extend(entries);
            v.sort_by_key(|e| e.timestamp_ns);
        }
    }

    /// Number of streams held.
    pub fn len(&self) -> usize {
        self.streams.len()
    }

    /// True when no stream is held.
    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

impl LogSource for InMemorySource {
    fn select(&self, req: &SelectRequest<'_>) -> Result<Vec<StreamData>, SourceError> {
        let mut out = Vec::new();
        for (labels, entries) in &self.streams {
            if !Matcher::select(req.matchers, labels) {
                continue;
            }
            let lo = entries.partition_point(|e| e.timestamp_ns < req.start_ns);
            let hi = entries.partition_point(|e| e.timestamp_ns < req.end_ns);
            if lo >= hi {
                continue;
            }
            let mut bounds: Vec<(usize, usize)> = (lo..hi)
                .step_by(BATCH_SIZE)
                .map(|s| (s, (s + BATCH_SIZE).min(hi)))
                .collect();
            if req.direction == Direction::Backward {
                bounds.reverse();
            }
            let shared = Arc::clone(entries);
            let batches = bounds.into_iter().map(move |(start, end)| {
                Ok(EntryBatch {
                    entries: Arc::clone(&shared),
                    start,
                    end,
                    origin: None,
                    cached: None,
                })
            });
            out.push(StreamData {
                labels: labels.clone(),
                batches: Box::new(batches),
                counts: Vec::new(),
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MatchOp;

    fn entry(ts: i64, line: &str) -> Entry {
        Entry {
            timestamp_ns: ts,
            line: line.to_owned(),
            structured_metadata: Default::default(),
        }
    }

    #[test]
    fn required_substrings_come_from_literal_and_regex_filters() {
        use crate::syntax::ast::{LineFilterOp as Op, LineFilterValue as V};
        let f = |op, values: Vec<V>| LineFilter { op, values };
        let lit = |s: &str| V::Literal(s.to_string());
        let filters = vec![
            f(Op::Contains, vec![lit("error")]),
            f(Op::Contains, vec![lit("a"), lit("b")]),
            f(Op::Contains, vec![lit("")]),
            f(Op::Contains, vec![V::Ip("10.0.0.0/8".to_string())]),
            f(Op::NotContains, vec![lit("debug")]),
            f(Op::Match, vec![lit("x+")]),
            f(Op::Match, vec![lit("(?i)error")]),
            f(Op::Match, vec![lit("(?i)err(or)?s")]),
            f(Op::Match, vec![lit("status=5[0-9]{2} path=/api")]),
            f(Op::Match, vec![lit("timeout"), lit("refused.*conn")]),
            f(Op::Match, vec![lit("timeout"), lit("a|b")]),
        ];
        let strings = |v: &[&str]| {
            v.iter()
                .map(|s| Needle {
                    text: s.to_string(),
                    ignore_ascii_case: false,
                })
                .collect::<Vec<_>>()
        };
        let folded = vec![Needle {
            text: "error".to_string(),
            ignore_ascii_case: true,
        }];
        assert_eq!(
            required_substrings(&filters),
            vec![
                strings(&["error"]),
                strings(&["a", "b"]),
                folded,
                strings(&[" path=/api"]),
                strings(&["timeout", "refused"]),
            ]
        );
    }

    #[test]
    fn in_memory_source_selects_by_matchers_and_half_open_range() {
        let mut src = InMemorySource::new();
        src.push(
            LabelSet::from_pairs([("app", "a")]).unwrap(),
            [entry(3, "c"), entry(1, "a"), entry(2, "b")],
        );
        src.push(
            LabelSet::from_pairs([("app", "b")]).unwrap(),
            [entry(1, "x")],
        );
        let m = [Matcher::new("app", MatchOp::Eq, "a").unwrap()];
        let req = SelectRequest {
            count_edges: None,
            any_order: false,
            samples: None,
            matchers: &m,
            start_ns: 1,
            end_ns: 3,
            direction: Direction::Forward,
            line_filters: &[],
        };
        let streams = src.select(&req).unwrap();
        assert_eq!(streams.len(), 1);
        let lines: Vec<String> = streams
            .into_iter()
            .flat_map(|s| s.batches)
            .flat_map(|b| b.unwrap().as_slice().to_vec())
            .map(|e| e.line)
            .collect();
        assert_eq!(lines, vec!["a", "b"]);
    }
}
