//! Index: per tenant and UTC day, an inverted index label=value → streams, and for each
//! stream its chunks in segments; built from segment footers on start and kept current
//! from the ingester's heads.
//!
//! Owns stream ids, matcher resolution (posting lists for `=`, the value dictionary of one
//! label for `=~`, `!=`, `!~` — never a scan of every stream unless every matcher accepts
//! the empty value), label names, label values and series. It does not own entries (heads
//! and segments do) nor retention cut-offs (the read API applies them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use lode_push::LabelSet;
use parking_lot::RwLock;
use query_lang::matcher::Matcher;

use crate::clock::Day;
use crate::storage::segment::SegmentId;
use crate::storage::SegmentMeta;
use crate::tenant::TenantId;

/// A stream's id within one tenant, stable for the life of the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamId(pub u64);

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A stream as the read API hands it out.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct StreamRef {
    pub id: StreamId,
    pub labels: LabelSet,
}

/// One chunk of a stream inside a segment: `segment.footer.streams[stream].chunks[chunk]`.
#[derive(Clone, Debug)]
pub struct SegmentChunk {
    pub segment: Arc<SegmentMeta>,
    pub stream: usize,
    pub chunk: usize,
}

impl SegmentChunk {
    pub fn info(&self) -> Option<&crate::storage::segment::ChunkInfo> {
        self.segment
            .footer
            .streams
            .get(self.stream)
            .and_then(|s| s.chunks.get(self.chunk))
    }
}

#[derive(Default)]
struct DayStream {
    /// Time range of entries still in the ingester's heads.
    head: Option<(i64, i64)>,
    chunks: Vec<SegmentChunk>,
}

impl DayStream {
    fn overlaps(&self, start: i64, end: i64) -> bool {
        let in_head = self.head.is_some_and(|(lo, hi)| lo < end && hi >= start);
        in_head
            || self
                .chunks
                .iter()
                .filter_map(SegmentChunk::info)
                .any(|c| c.meta.overlaps(start, end))
    }
}

#[derive(Default)]
struct DayIndex {
    /// name → value → streams: the posting lists and, per name, the value dictionary.
    postings: BTreeMap<String, BTreeMap<String, BTreeSet<StreamId>>>,
    streams: HashMap<StreamId, DayStream>,
}

impl DayIndex {
    fn add_stream(&mut self, id: StreamId, labels: &LabelSet) -> &mut DayStream {
        if !self.streams.contains_key(&id) {
            for (name, value) in labels.iter() {
                self.postings
                    .entry(name.to_string())
                    .or_default()
                    .entry(value.to_string())
                    .or_default()
                    .insert(id);
            }
        }
        self.streams.entry(id).or_default()
    }

    fn remove_stream_if_empty(&mut self, id: StreamId, labels: &LabelSet) {
        let empty = self
            .streams
            .get(&id)
            .is_some_and(|s| s.head.is_none() && s.chunks.is_empty());
        if !empty {
            return;
        }
        self.streams.remove(&id);
        for (name, value) in labels.iter() {
            if let Some(values) = self.postings.get_mut(name) {
                if let Some(ids) = values.get_mut(value) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        values.remove(value);
                    }
                }
                if values.is_empty() {
                    self.postings.remove(name);
                }
            }
        }
    }

    /// Streams of this day selected by every matcher.
    fn resolve(&self, matchers: &[Matcher]) -> BTreeSet<StreamId> {
        let mut selected: Option<BTreeSet<StreamId>> = None;
        // Matchers that reject the empty value only select streams that carry the label,
        // so their posting lists bound the result; the others can only remove streams.
        for m in matchers.iter().filter(|m| !m.matches_empty()) {
            let values = self.postings.get(&m.name);
            let ids: BTreeSet<StreamId> = match (m.op, values) {
                (_, None) => BTreeSet::new(),
                (query_lang::matcher::MatchOp::Eq, Some(values)) => {
                    values.get(&m.value).cloned().unwrap_or_default()
                }
                (_, Some(values)) => values
                    .iter()
                    .filter(|(v, _)| m.matches(v))
                    .flat_map(|(_, ids)| ids.iter().copied())
                    .collect(),
            };
            selected = Some(match selected {
                None => ids,
                Some(prev) => prev.intersection(&ids).copied().collect(),
            });
            if selected.as_ref().is_some_and(BTreeSet::is_empty) {
                return BTreeSet::new();
            }
        }
        let mut selected = selected.unwrap_or_else(|| self.streams.keys().copied().collect());
        for m in matchers.iter().filter(|m| m.matches_empty()) {
            let Some(values) = self.postings.get(&m.name) else {
                continue;
            };
            for (value, ids) in values {
                if !m.matches(value) {
                    for id in ids {
                        selected.remove(id);
                    }
                }
            }
        }
        selected
    }
}

#[derive(Default)]
struct TenantIndex {
    ids: HashMap<LabelSet, StreamId>,
    labels: Vec<LabelSet>,
    days: BTreeMap<Day, DayIndex>,
}

impl TenantIndex {
    fn intern(&mut self, labels: &LabelSet) -> StreamId {
        if let Some(id) = self.ids.get(labels) {
            return *id;
        }
        let id = StreamId(self.labels.len() as u64);
        self.labels.push(labels.clone());
        self.ids.insert(labels.clone(), id);
        id
    }

    fn add_segment(&mut self, segment: &Arc<SegmentMeta>) {
        let f = &segment.footer;
        for (si, s) in f.streams.iter().enumerate() {
            let id = self.intern(&s.labels);
            let day = self.days.entry(f.day).or_default();
            let ds = day.add_stream(id, &s.labels);
            for ci in 0..s.chunks.len() {
                ds.chunks.push(SegmentChunk {
                    segment: segment.clone(),
                    stream: si,
                    chunk: ci,
                });
            }
        }
    }

    fn remove_segments(&mut self, day: Day, ids: &[SegmentId]) {
        if ids.is_empty() {
            return;
        }
        let TenantIndex { labels, days, .. } = self;
        let Some(d) = days.get_mut(&day) else {
            return;
        };
        let touched: Vec<StreamId> = d
            .streams
            .iter_mut()
            .filter_map(|(sid, s)| {
                let before = s.chunks.len();
                s.chunks.retain(|c| !ids.contains(&c.segment.id));
                (s.chunks.len() != before).then_some(*sid)
            })
            .collect();
        for sid in touched {
            if let Some(l) = usize::try_from(sid.0).ok().and_then(|i| labels.get(i)) {
                d.remove_stream_if_empty(sid, l);
            }
        }
        if d.streams.is_empty() {
            days.remove(&day);
        }
    }

    fn labels_of(&self, id: StreamId) -> Option<&LabelSet> {
        usize::try_from(id.0).ok().and_then(|i| self.labels.get(i))
    }

    fn days_in(&self, start: i64, end: i64) -> impl Iterator<Item = (&Day, &DayIndex)> {
        let first = Day::of_ns(start);
        let last = Day::of_ns(end.saturating_sub(1).max(start));
        self.days.range(first..=last)
    }

    fn select(&self, matchers: &[Matcher], start: i64, end: i64) -> BTreeSet<StreamId> {
        let mut out = BTreeSet::new();
        if start >= end {
            return out;
        }
        for (_, day) in self.days_in(start, end) {
            for id in day.resolve(matchers) {
                if !out.contains(&id)
                    && day.streams.get(&id).is_some_and(|s| s.overlaps(start, end))
                {
                    out.insert(id);
                }
            }
        }
        out
    }
}

/// The in-memory index of every tenant.
#[derive(Default)]
pub struct Index {
    tenants: RwLock<HashMap<TenantId, TenantIndex>>,
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("tenants", &self.tenants.read().len())
            .finish()
    }
}

impl Index {
    pub fn new() -> Index {
        Index::default()
    }

    /// The id of a tenant's stream, assigned on first sight.
    pub fn stream_id(&self, tenant: &TenantId, labels: &LabelSet) -> StreamId {
        if let Some(id) = self
            .tenants
            .read()
            .get(tenant)
            .and_then(|t| t.ids.get(labels))
        {
            return *id;
        }
        self.tenants
            .write()
            .entry(tenant.clone())
            .or_default()
            .intern(labels)
    }

    /// Records that the ingester's heads hold entries of a stream in `[min_ts, max_ts]`.
    pub fn note_head(&self, tenant: &TenantId, labels: &LabelSet, min_ts: i64, max_ts: i64) {
        let mut tenants = self.tenants.write();
        let t = tenants.entry(tenant.clone()).or_default();
        let id = t.intern(labels);
        let mut day = Day::of_ns(min_ts);
        while day <= Day::of_ns(max_ts) {
            let lo = min_ts.max(day.start_ns());
            let hi = max_ts.min(day.end_ns() - 1);
            let s = t.days.entry(day).or_default().add_stream(id, labels);
            s.head = Some(match s.head {
                Some((a, b)) => (a.min(lo), b.max(hi)),
                None => (lo, hi),
            });
            day = Day(day.0 + 1);
        }
    }

    /// Forgets head time ranges of a stream on a day once its heads there are flushed.
    pub fn clear_head(&self, tenant: &TenantId, labels: &LabelSet, day: Day) {
        let mut tenants = self.tenants.write();
        let Some(t) = tenants.get_mut(tenant) else {
            return;
        };
        let Some(&id) = t.ids.get(labels) else {
            return;
        };
        if let Some(d) = t.days.get_mut(&day) {
            if let Some(s) = d.streams.get_mut(&id) {
                s.head = None;
            }
            d.remove_stream_if_empty(id, labels);
        }
    }

    /// Adds a segment's streams and chunks.
    pub fn add_segment(&self, segment: &Arc<SegmentMeta>) {
        let mut tenants = self.tenants.write();
        let t = tenants.entry(segment.footer.tenant.clone()).or_default();
        t.add_segment(segment);
    }

    /// Removes a segment's chunks, and streams left with nothing on that day.
    pub fn remove_segment(&self, tenant: &TenantId, day: Day, id: SegmentId) {
        let mut tenants = self.tenants.write();
        if let Some(t) = tenants.get_mut(tenant) {
            t.remove_segments(day, &[id]);
        }
    }

    /// Adds `new` and removes the segments `old` of the same tenant and day under one
    /// lock: a reader sees the chunks of `new` or those of `old`, never both nor neither.
    /// (Compaction and retention rewrites: `new` holds every entry `old` held.)
    pub fn replace_segments(&self, new: &Arc<SegmentMeta>, old: &[SegmentId]) {
        let mut tenants = self.tenants.write();
        let t = tenants.entry(new.footer.tenant.clone()).or_default();
        // Added first, so a stream present in both never drops out of the postings.
        t.add_segment(new);
        t.remove_segments(new.footer.day, old);
    }

    /// Tenants with anything indexed.
    pub fn tenants(&self) -> Vec<TenantId> {
        self.tenants.read().keys().cloned().collect()
    }

    /// Streams of `tenant` selected by all `matchers` with data in `[start_ns, end_ns)`,
    /// ordered by id.
    pub fn streams(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
    ) -> Vec<StreamRef> {
        let tenants = self.tenants.read();
        let Some(t) = tenants.get(tenant) else {
            return Vec::new();
        };
        t.select(matchers, start_ns, end_ns)
            .into_iter()
            .filter_map(|id| {
                t.labels_of(id).map(|labels| StreamRef {
                    id,
                    labels: labels.clone(),
                })
            })
            .collect()
    }

    /// A stream's segment chunks overlapping `[start_ns, end_ns)`.
    pub fn segment_chunks(
        &self,
        tenant: &TenantId,
        id: StreamId,
        start_ns: i64,
        end_ns: i64,
    ) -> Vec<SegmentChunk> {
        let tenants = self.tenants.read();
        let Some(t) = tenants.get(tenant) else {
            return Vec::new();
        };
        t.days_in(start_ns, end_ns)
            .filter_map(|(_, d)| d.streams.get(&id))
            .flat_map(|s| &s.chunks)
            .filter(|c| c.info().is_some_and(|i| i.meta.overlaps(start_ns, end_ns)))
            .cloned()
            .collect()
    }

    /// Label names of the selected streams (all streams when `matchers` is empty), sorted.
    pub fn label_names(
        &self,
        tenant: &TenantId,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
    ) -> Vec<String> {
        let mut names = BTreeSet::new();
        for s in self.streams(tenant, matchers, start_ns, end_ns) {
            for (name, _) in s.labels.iter() {
                if !names.contains(name) {
                    names.insert(name.to_string());
                }
            }
        }
        names.into_iter().collect()
    }

    /// Values of one label among the selected streams, sorted. Without matchers this reads
    /// the label's value dictionary and checks each value's posting list for time overlap.
    pub fn label_values(
        &self,
        tenant: &TenantId,
        name: &str,
        matchers: &[Matcher],
        start_ns: i64,
        end_ns: i64,
    ) -> Vec<String> {
        let mut values = BTreeSet::new();
        if matchers.is_empty() {
            let tenants = self.tenants.read();
            let Some(t) = tenants.get(tenant) else {
                return Vec::new();
            };
            if start_ns >= end_ns {
                return Vec::new();
            }
            for (_, d) in t.days_in(start_ns, end_ns) {
                for (value, ids) in d.postings.get(name).into_iter().flatten() {
                    if values.contains(value) {
                        continue;
                    }
                    let live = ids.iter().any(|id| {
                        d.streams
                            .get(id)
                            .is_some_and(|s| s.overlaps(start_ns, end_ns))
                    });
                    if live {
                        values.insert(value.clone());
                    }
                }
            }
        } else {
            for s in self.streams(tenant, matchers, start_ns, end_ns) {
                if let Some(v) = s.labels.get(name) {
                    values.insert(v.to_string());
                }
            }
        }
        values.into_iter().collect()
    }

    /// Label sets of streams matching any of the matcher groups (Loki's `match[]`), sorted.
    pub fn series(
        &self,
        tenant: &TenantId,
        groups: &[Vec<Matcher>],
        start_ns: i64,
        end_ns: i64,
    ) -> Vec<LabelSet> {
        let mut out = BTreeSet::new();
        for g in groups {
            for s in self.streams(tenant, g, start_ns, end_ns) {
                out.insert(s.labels);
            }
        }
        out.into_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use query_lang::matcher::MatchOp;

    const T0: i64 = 1_767_225_600_000_000_000;

    fn m(name: &str, op: MatchOp, value: &str) -> Matcher {
        Matcher::new(name, op, value).unwrap()
    }

    fn index() -> (Index, TenantId) {
        let idx = Index::new();
        let t = TenantId::new("t").unwrap();
        for (i, l) in [
            r#"{app="api", env="prod"}"#,
            r#"{app="web", env="prod"}"#,
            r#"{app="db", env="dev", tier="storage"}"#,
        ]
        .iter()
        .enumerate()
        {
            let l = LabelSet::parse(l).unwrap();
            idx.note_head(&t, &l, T0 + i as i64, T0 + 10);
        }
        (idx, t)
    }

    fn apps(idx: &Index, t: &TenantId, ms: &[Matcher]) -> Vec<String> {
        let mut v: Vec<_> = idx
            .streams(t, ms, T0, T0 + 100)
            .into_iter()
            .map(|s| s.labels.get("app").unwrap_or_default().to_string())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn all_four_matcher_kinds_resolve_like_prometheus() {
        let (idx, t) = index();
        assert_eq!(
            apps(&idx, &t, &[m("env", MatchOp::Eq, "prod")]),
            ["api", "web"]
        );
        assert_eq!(
            apps(&idx, &t, &[m("app", MatchOp::Re, "a.*|d.")]),
            ["api", "db"]
        );
        assert_eq!(
            apps(
                &idx,
                &t,
                &[m("env", MatchOp::Eq, "prod"), m("app", MatchOp::Neq, "api")]
            ),
            ["web"]
        );
        assert_eq!(
            apps(
                &idx,
                &t,
                &[m("env", MatchOp::Re, ".+"), m("app", MatchOp::Nre, "w.*")]
            ),
            ["api", "db"]
        );
        // A missing label equals "": tier="" selects streams without it.
        assert_eq!(
            apps(&idx, &t, &[m("tier", MatchOp::Eq, "")]),
            ["api", "web"]
        );
        assert!(apps(&idx, &t, &[m("app", MatchOp::Eq, "nope")]).is_empty());
    }

    #[test]
    fn time_ranges_and_tenants_bound_every_answer() {
        let (idx, t) = index();
        let all = [m("app", MatchOp::Re, ".+")];
        assert_eq!(idx.streams(&t, &all, T0 + 2, T0 + 3).len(), 3);
        assert!(idx.streams(&t, &all, T0 + 11, T0 + 20).is_empty());
        let other = TenantId::new("other").unwrap();
        assert!(idx.streams(&other, &all, T0, T0 + 100).is_empty());
        assert!(idx.label_names(&other, &[], T0, T0 + 100).is_empty());
    }

    #[test]
    fn label_names_values_and_series_come_from_the_index() {
        let (idx, t) = index();
        assert_eq!(
            idx.label_names(&t, &[], T0, T0 + 100),
            ["app", "env", "tier"]
        );
        assert_eq!(
            idx.label_values(&t, "env", &[], T0, T0 + 100),
            ["dev", "prod"]
        );
        assert_eq!(
            idx.label_values(&t, "app", &[m("env", MatchOp::Eq, "prod")], T0, T0 + 100),
            ["api", "web"]
        );
        let series = idx.series(
            &t,
            &[
                vec![m("app", MatchOp::Eq, "db")],
                vec![m("app", MatchOp::Eq, "api")],
            ],
            T0,
            T0 + 100,
        );
        assert_eq!(series.len(), 2);
    }

    /// A segment of `apps`' streams, one entry each at `ts`.
    fn segment(t: &TenantId, apps: &[&str], ts: i64) -> Arc<SegmentMeta> {
        use crate::storage::segment::{encode, FlushChunk};
        let chunks: Vec<FlushChunk> = apps
            .iter()
            .map(|a| FlushChunk {
                labels: LabelSet::parse(&format!(r#"{{app="{a}"}}"#)).unwrap(),
                blocks: vec![crate::chunk::SealedBlock::seal(
                    vec![lode_push::Entry {
                        timestamp_ns: ts,
                        line: "x".into(),
                        structured_metadata: Default::default(),
                    }],
                    1,
                )
                .unwrap()],
            })
            .collect();
        let (bytes, footer) = encode(t, Day::of_ns(ts), &chunks, &[], &[]);
        let id = SegmentId::new(ts);
        Arc::new(SegmentMeta {
            id,
            path: crate::storage::segment_path(t, footer.day, id),
            size: bytes.len() as u64,
            footer,
        })
    }

    #[test]
    fn replacing_segments_swaps_their_chunks_in_one_step() {
        let idx = Index::new();
        let t = TenantId::new("t").unwrap();
        let a = segment(&t, &["api", "web"], T0);
        let b = segment(&t, &["api"], T0 + 1);
        idx.add_segment(&a);
        idx.add_segment(&b);
        let merged = segment(&t, &["api", "web"], T0 + 2);
        idx.replace_segments(&merged, &[a.id, b.id]);
        let api = idx.stream_id(&t, &LabelSet::parse(r#"{app="api"}"#).unwrap());
        let chunks = idx.segment_chunks(&t, api, T0, T0 + 100);
        assert_eq!(chunks.len(), 1);
        assert_eq!(chunks[0].segment.id, merged.id);
        assert_eq!(apps(&idx, &t, &[]), ["api", "web"]);
        // Nothing of the old segments is held any more.
        assert_eq!(Arc::strong_count(&a), 1);
        assert_eq!(Arc::strong_count(&b), 1);
        // A stream only the old segments had is gone with them.
        let lone = segment(&t, &["db"], T0 + 3);
        idx.add_segment(&lone);
        let empty = segment(&t, &[], T0 + 4);
        idx.replace_segments(&empty, &[lone.id]);
        assert_eq!(apps(&idx, &t, &[]), ["api", "web"]);
    }

    #[test]
    fn clearing_a_flushed_head_drops_streams_with_nothing_left() {
        let (idx, t) = index();
        let l = LabelSet::parse(r#"{app="api", env="prod"}"#).unwrap();
        idx.clear_head(&t, &l, Day::of_ns(T0));
        assert_eq!(apps(&idx, &t, &[m("env", MatchOp::Eq, "prod")]), ["web"]);
        assert_eq!(
            idx.label_values(&t, "app", &[], T0, T0 + 100),
            ["db", "web"]
        );
    }
}
