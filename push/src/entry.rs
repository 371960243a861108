//! Entries and pushed streams as they travel from a client to the server.
//!
//! Owns the decoded shape of a push (label-set string + entries), independent of whether
//! it arrived as protobuf or JSON, and [`Metadata`], an entry's structured metadata in a
//! form that many entries share. It does not validate: that is the server's distributor.

use std::fmt;
use std::hash::{Hash, Hasher};
use std::ops::Deref;
use std::sync::{Arc, LazyLock};

/// One log entry: a nanosecond Unix timestamp, the line, and optional structured metadata.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    /// Nanoseconds since the Unix epoch.
    pub timestamp_ns: i64,
    /// The log line.
    pub line: String,
    /// Structured metadata (`name`, `value`) pairs, in the order they were sent.
    pub structured_metadata: Metadata,
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

/// The structured metadata Loki's level discovery adds to an entry.
pub const DETECTED_LEVEL: &str = "detected_level";

/// The levels Loki's discovery writes as `detected_level`.
pub const LEVELS: [&str; 8] = [
    "trace", "debug", "info", "warn", "error", "critical", "fatal", "unknown",
];

/// One `[(detected_level, level)]` set per level of [`LEVELS`], shared by every entry that
/// carries nothing else.
static LEVEL_SETS: LazyLock<Vec<[(String, String); 1]>> = LazyLock::new(|| {
    LEVELS
        .iter()
        .map(|l| [(DETECTED_LEVEL.to_owned(), (*l).to_owned())])
        .collect()
});

/// An entry's structured metadata: (`name`, `value`) pairs in the order sent, read as a
/// slice. Immutable and cheap to clone: most entries carry only `detected_level`, and those
/// share one static set per level, so neither ingest nor a block decode allocates for them
/// (three allocations per line, freed on another thread, were a tenth of ingest CPU).
#[derive(Clone)]
pub struct Metadata(Repr);

#[derive(Clone)]
enum Repr {
    Static(&'static [(String, String)]),
    Shared(Arc<[(String, String)]>),
}

impl Metadata {
    /// No pairs.
    pub const fn new() -> Metadata {
        Metadata(Repr::Static(&[]))
    }

    /// The shared `[(detected_level, level)]` set when `level` is one of [`LEVELS`].
    pub fn detected_level(level: &str) -> Option<Metadata> {
        let i = LEVELS.iter().position(|l| *l == level)?;
        LEVEL_SETS.get(i).map(|set| Metadata(Repr::Static(set)))
    }

    /// The pairs as a slice.
    pub fn as_slice(&self) -> &[(String, String)] {
        match &self.0 {
            Repr::Static(s) => s,
            Repr::Shared(s) => s,
        }
    }

    /// These pairs followed by (`name`, `value`).
    pub fn with(&self, name: &str, value: &str) -> Metadata {
        if self.is_empty() && name == DETECTED_LEVEL {
            if let Some(m) = Metadata::detected_level(value) {
                return m;
            }
        }
        let mut pairs = Vec::with_capacity(self.len() + 1);
        pairs.extend_from_slice(self);
        pairs.push((name.to_owned(), value.to_owned()));
        Metadata::from(pairs)
    }
}

impl Default for Metadata {
    fn default() -> Metadata {
        Metadata::new()
    }
}

impl Deref for Metadata {
    type Target = [(String, String)];

    fn deref(&self) -> &[(String, String)] {
        self.as_slice()
    }
}

impl From<Vec<(String, String)>> for Metadata {
    fn from(pairs: Vec<(String, String)>) -> Metadata {
        match pairs.as_slice() {
            [] => Metadata::new(),
            [(name, value)] if name == DETECTED_LEVEL => Metadata::detected_level(value)
                .unwrap_or_else(|| Metadata(Repr::Shared(pairs.into()))),
            _ => Metadata(Repr::Shared(pairs.into())),
        }
    }
}

impl FromIterator<(String, String)> for Metadata {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(iter: I) -> Metadata {
        Metadata::from(iter.into_iter().collect::<Vec<_>>())
    }
}

impl<'a> IntoIterator for &'a Metadata {
    type Item = &'a (String, String);
    type IntoIter = std::slice::Iter<'a, (String, String)>;

    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

impl PartialEq for Metadata {
    fn eq(&self, other: &Metadata) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Metadata {}

impl PartialEq<[(String, String)]> for Metadata {
    fn eq(&self, other: &[(String, String)]) -> bool {
        self.as_slice() == other
    }
}

impl PartialEq<Vec<(String, String)>> for Metadata {
    fn eq(&self, other: &Vec<(String, String)>) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Hash for Metadata {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_slice().fmt(f)
    }
}

/// Turns decoded (`name`, `value`) pairs into [`Metadata`], handing out one shared set per
/// distinct run of pairs it has seen: a block or WAL record decoded entry by entry repeats
/// a handful of sets, which then cost one allocation each rather than three per entry.
#[derive(Default)]
pub struct MetadataInterner {
    sets: Vec<Metadata>,
}

impl MetadataInterner {
    /// Sets remembered per interner; entries past this many distinct sets (unique trace
    /// ids, say) get their own allocation, as before.
    const MAX_SETS: usize = 16;

    /// The metadata holding exactly `pairs`.
    pub fn get(&mut self, pairs: &[(&str, &str)]) -> Metadata {
        if pairs.is_empty() {
            return Metadata::new();
        }
        let same = |m: &Metadata| {
            m.len() == pairs.len()
                && m.iter()
                    .zip(pairs)
                    .all(|((n, v), (pn, pv))| n == pn && v == pv)
        };
        if let Some(m) = self.sets.iter().find(|m| same(m)) {
            return m.clone();
        }
        let m: Metadata = pairs
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect();
        if self.sets.len() < Self::MAX_SETS {
            self.sets.push(m.clone());
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(p: &[(&str, &str)]) -> Vec<(String, String)> {
        p.iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn metadata_reads_as_the_pairs_it_was_made_of() {
        for p in [
            vec![],
            pairs(&[("detected_level", "info")]),
            pairs(&[("detected_level", "verbose")]),
            pairs(&[("trace_id", "abc"), ("detected_level", "warn")]),
        ] {
            let m = Metadata::from(p.clone());
            assert_eq!(m.as_slice(), p.as_slice());
            assert_eq!(m, p);
            assert_eq!(format!("{m:?}"), format!("{p:?}"));
            assert_eq!(m.iter().cloned().collect::<Metadata>(), m);
        }
    }

    #[test]
    fn every_level_has_a_shared_set_and_with_appends_in_order() {
        for level in LEVELS {
            let m = Metadata::new().with(DETECTED_LEVEL, level);
            assert_eq!(m, pairs(&[("detected_level", level)]));
            assert!(matches!(m.0, Repr::Static(_)), "{level}");
        }
        assert!(Metadata::detected_level("verbose").is_none());
        let m = Metadata::from(pairs(&[("trace_id", "t")])).with(DETECTED_LEVEL, "info");
        assert_eq!(m, pairs(&[("trace_id", "t"), ("detected_level", "info")]));
    }

    #[test]
    fn the_interner_shares_repeated_sets_and_keeps_distinct_ones_apart() {
        let mut interner = MetadataInterner::default();
        let a = interner.get(&[("trace_id", "1"), ("k", "v")]);
        let b = interner.get(&[("trace_id", "1"), ("k", "v")]);
        let c = interner.get(&[("trace_id", "1")]);
        let d = interner.get(&[("trace_id", "1"), ("k", "w")]);
        assert_eq!(a, pairs(&[("trace_id", "1"), ("k", "v")]));
        assert!(matches!((&a.0, &b.0), (Repr::Shared(x), Repr::Shared(y)) if Arc::ptr_eq(x, y)));
        assert_eq!(c, pairs(&[("trace_id", "1")]));
        assert_eq!(d, pairs(&[("trace_id", "1"), ("k", "w")]));
        assert!(interner.get(&[]).is_empty());
        for i in 0..100 {
            let id = i.to_string();
            assert_eq!(interner.get(&[("id", &id)]), pairs(&[("id", &id)]));
        }
    }
}
