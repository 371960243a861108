//! Range aggregations: samples from log lines, windowed over the step grid.
//!
//! Every surviving line becomes one sample (1, its byte length, or an unwrapped value)
//! keyed by its final labels; samples of one series are then swept once with two
//! pointers over the steps, each step's window being `(t - offset - range, t - offset]`.
//! Empty windows emit nothing; there is no extrapolation except in `rate_counter`.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use std::sync::Arc;

use lode_push::{Entry, LabelSet};

use super::log_query::{leading_line_filters, print_labels};
use super::sample_cache::{BlockSamples, CachedSamples, CachedSeries, SampleCache, SampleKey};
use super::source::{Direction, LogSource, SelectRequest, StreamData};
use super::{EvalError, QueryParams};
use crate::log::conversion::{parse_bytes, parse_duration_seconds, parse_float};
use crate::log::label_filter::LabelFilter;
use crate::log::labels::LabelsDelta;
use crate::log::labels::SAMPLE_EXTRACTION_ERR;
use crate::log::{referenced_labels, Labels, LabelsBuilder, Pipeline, Wanted, ERROR_LABEL};
use crate::syntax::ast::{Conversion, Grouping, RangeAggregation, RangeOp, Stage};
use crate::MatchOp;

/// The evaluation timestamps of a query.
#[derive(Clone, Debug)]
pub(crate) struct StepGrid {
    start_ns: i64,
    step_ns: i64,
    count: usize,
}

impl StepGrid {
    pub(crate) fn new(params: &QueryParams) -> Self {
        let count = if params.is_instant() || params.step_ns <= 0 {
            1
        } else {
            usize::try_from((params.end_ns - params.start_ns) / params.step_ns + 1).unwrap_or(1)
        };
        StepGrid {
            start_ns: params.start_ns,
            step_ns: params.step_ns,
            count,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.count
    }

    pub(crate) fn timestamp_ns(&self, step: usize) -> i64 {
        self.start_ns + self.step_ns * step as i64
    }

    pub(crate) fn timestamp_ms(&self, step: usize) -> i64 {
        self.timestamp_ns(step).div_euclid(1_000_000)
    }

    pub(crate) fn first_ns(&self) -> i64 {
        self.start_ns
    }

    pub(crate) fn last_ns(&self) -> i64 {
        self.timestamp_ns(self.count.saturating_sub(1))
    }
}

/// A series of an intermediate result: its labels and `(step index, value)` points in
/// step order.
#[derive(Clone, Debug, Default)]
pub(crate) struct MSeries {
    pub labels: Labels,
    pub points: Vec<(u32, f64)>,
}

/// An intermediate vector-valued result, series-major.
#[derive(Clone, Debug, Default)]
pub(crate) struct Matrix {
    pub series: Vec<MSeries>,
}

pub(crate) struct Ctx<'a> {
    pub source: &'a dyn LogSource,
    pub grid: &'a StepGrid,
}

/// What an enclosing aggregation tells a range aggregation: which labels it will read
/// (Loki's parser hints) and whether `__error__` is grouped on rather than fatal.
#[derive(Clone, Debug, Default)]
pub(crate) struct Hint {
    pub wanted: Option<Vec<String>>,
    /// The enclosing aggregation is a `sum` grouping by exactly `wanted` (or by nothing
    /// when `wanted` is empty): it adds the series sharing those labels, so a range
    /// aggregation whose windows are sums of counts may key its series by them alone.
    pub sum: bool,
}

impl Hint {
    fn preserve_errors(&self) -> bool {
        self.wanted
            .as_ref()
            .is_some_and(|w| w.iter().any(|n| n == ERROR_LABEL))
    }
}

/// Distinct label deltas remembered per stream; lines past it take the slow path (a
/// parser producing a unique value per line must not grow an unbounded cache).
const MAX_DELTAS_PER_STREAM: usize = 4096;

struct SeriesSamples {
    labels: Labels,
    ts: Vec<i64>,
    values: Vec<f64>,
    sorted: bool,
}

fn apply_grouping(labels: &Labels, grouping: &Option<Grouping>) -> Labels {
    match grouping {
        None => labels.clone(),
        Some(Grouping::By(names)) => labels
            .iter()
            .filter(|(k, _)| names.contains(k))
            .cloned()
            .collect(),
        Some(Grouping::Without(names)) => labels
            .iter()
            .filter(|(k, _)| !names.contains(k))
            .cloned()
            .collect(),
    }
}

fn convert(conv: Conversion, raw: &str) -> Result<f64, String> {
    match conv {
        Conversion::Float => parse_float(raw),
        Conversion::Bytes => parse_bytes(raw),
        Conversion::Duration | Conversion::DurationSeconds => parse_duration_seconds(raw),
    }
}

/// Labels for `absent_over_time`: the selector's `=` matchers whose name appears once.
fn absent_labels(agg: &RangeAggregation) -> Labels {
    let matchers = &agg.range.selector.matchers;
    let mut out: Labels = matchers
        .iter()
        .filter(|m| m.op == MatchOp::Eq)
        .filter(|m| matchers.iter().filter(|o| o.name == m.name).count() == 1)
        .map(|m| (m.name.clone(), m.value.clone()))
        .collect();
    out.sort();
    out
}

pub(crate) fn eval_range_agg(
    agg: &RangeAggregation,
    ctx: &Ctx<'_>,
    hint: &Hint,
) -> Result<Matrix, EvalError> {
    let lr = &agg.range;
    // Labels read after this aggregation: the enclosing aggregation's, or, at the top,
    // this one's own `by` (its output keeps nothing else), so parsers skip the rest.
    let read_after = match (&hint.wanted, &agg.grouping) {
        (Some(names), _) => Some(names.clone()),
        (None, Some(Grouping::By(g))) => Some(g.clone()),
        (None, _) => None,
    };
    let wanted = match read_after {
        Some(names) => {
            let mut names = names;
            referenced_labels(&lr.selector.pipeline, &mut names);
            if let Some(u) = &lr.unwrap {
                names.push(u.label.clone());
                for f in &u.post_filters {
                    crate::log::label_filter_names(f, &mut names);
                }
            }
            if let Some(Grouping::By(g)) = &agg.grouping {
                names.extend(g.iter().cloned());
            }
            if matches!(agg.grouping, Some(Grouping::Without(_))) || names.iter().any(|n| n == "*")
            {
                Wanted::All
            } else {
                Wanted::Only(names)
            }
        }
        None => Wanted::All,
    };
    let pipeline = Pipeline::with_wanted(&lr.selector.pipeline, &wanted)?;
    // Under `sum [by (..)]`, windows that add line counts or byte counts give the same
    // sums whether lines are first split by their full label sets or only by the sum's
    // labels (counts are integers: no rounding differs), so lines are keyed by the
    // sum's labels: one lookup of those values per line instead of the label delta.
    let pushed_grouping = (hint.sum
        && agg.grouping.is_none()
        && lr.unwrap.is_none()
        && matches!(
            agg.op,
            RangeOp::CountOverTime | RangeOp::Rate | RangeOp::BytesOverTime | RangeOp::BytesRate
        ))
    .then(|| Grouping::By(hint.wanted.clone().unwrap_or_default()));
    let grouping = if pushed_grouping.is_some() {
        &pushed_grouping
    } else {
        &agg.grouping
    };
    let post_filters: Vec<LabelFilter> = match &lr.unwrap {
        Some(u) => u
            .post_filters
            .iter()
            .map(LabelFilter::new)
            .collect::<Result<_, _>>()
            .map_err(|e| EvalError::Pipeline(e.into()))?,
        None => Vec::new(),
    };
    let preserve = hint.preserve_errors();
    let grid = ctx.grid;
    // Samples in (first step - offset - range, last step - offset].
    let from = grid.first_ns() - lr.offset - lr.range;
    let to = grid.last_ns() - lr.offset;
    let hints = leading_line_filters(&lr.selector.pipeline);
    // Counts and byte sums whose pipeline never looks at a line (none, or only `drop` /
    // `keep`, as Grafana's logs volume `| drop __error__`) only need to know which windows
    // each line falls in: stores may count lines per span between window edges unread.
    let countable = lr
        .selector
        .pipeline
        .iter()
        .all(|s| matches!(s, Stage::Drop(_) | Stage::Keep(_)))
        && lr.unwrap.is_none()
        && matches!(
            agg.op,
            RangeOp::CountOverTime | RangeOp::Rate | RangeOp::BytesOverTime | RangeOp::BytesRate
        );
    let edges = if countable || sums_counts(agg) {
        window_edges(grid, lr.range, lr.offset)
    } else {
        Vec::new()
    };
    let absent = agg.op == RangeOp::AbsentOverTime;
    let job = StreamJob {
        agg,
        grouping,
        pipeline: &pipeline,
        post_filters: &post_filters,
        preserve,
        from,
        to,
        absent,
        simple: !pipeline.changes_labels() && lr.unwrap.is_none(),
        cache: None,
    };
    // Everything that decides a line's sample and series, bar the stream (a block is of
    // one stream): the aggregation with its pipeline and unwrap, the grouping series
    // are keyed by, the parser hints, whether errors are kept.
    let job = StreamJob {
        cache: ctx
            .source
            .sample_cache()
            .filter(|c| c.enabled())
            .map(|cache| JobCache {
                cache,
                key: SampleKey::new(
                    format!(
                        "{agg:?}|{grouping:?}|{wanted:?}|{}|{}|{}",
                        job.preserve, job.absent, job.simple
                    )
                    .into(),
                ),
            }),
        ..job
    };
    let req = SelectRequest {
        matchers: &lr.selector.matchers,
        start_ns: from.saturating_add(1),
        end_ns: to.saturating_add(1),
        direction: Direction::Forward,
        line_filters: &hints,
        count_edges: countable.then_some(edges.as_slice()),
        // Samples are sorted per series before windows are swept.
        any_order: true,
        samples: job.cache.as_ref().map(|c| &c.key),
    };
    let streams = ctx.source.select(&req)?;
    let series = collect_parallel(streams, &job)?;
    if absent {
        return Ok(absent_matrix(agg, &series, grid, lr.range, lr.offset));
    }
    let mut out = Matrix::default();
    for mut s in series {
        if sums_counts(agg) {
            let points = sweep_sums(agg, &s.ts, &s.values, grid, lr.offset, lr.range, &edges);
            if !points.is_empty() {
                out.series.push(MSeries {
                    labels: s.labels,
                    points,
                });
            }
            continue;
        }
        if !s.sorted {
            // Sorting the pairs themselves (stable: ties keep their arrival order) reads
            // memory in order, unlike sorting a permutation and gathering through it.
            let mut pairs: Vec<(i64, f64)> = s.ts.iter().copied().zip(s.values).collect();
            pairs.sort_by_key(|p| p.0);
            (s.ts, s.values) = pairs.into_iter().unzip();
        }
        let points = sweep(agg, &s.ts, &s.values, grid, lr.range, lr.offset);
        if !points.is_empty() {
            out.series.push(MSeries {
                labels: s.labels,
                points,
            });
        }
    }
    Ok(out)
}

/// What every stream of one range aggregation is run with.
struct StreamJob<'a> {
    agg: &'a RangeAggregation,
    /// How series are keyed: the aggregation's grouping, or the enclosing sum's.
    grouping: &'a Option<Grouping>,
    pipeline: &'a Pipeline,
    post_filters: &'a [LabelFilter],
    preserve: bool,
    from: i64,
    to: i64,
    absent: bool,
    simple: bool,
    /// Where whole blocks' samples are remembered, when the source has a cache.
    cache: Option<JobCache<'a>>,
}

/// The sample cache as one range aggregation uses it, with its extraction's key.
struct JobCache<'a> {
    cache: &'a SampleCache,
    key: SampleKey,
}

/// Samples of the series seen so far, keyed by their labels.
#[derive(Default)]
struct Collector {
    series: Vec<SeriesSamples>,
    index: HashMap<Labels, usize>,
}

impl Collector {
    /// Moves `other`'s samples in; a series both hold is marked for re-sorting when the
    /// appended samples are older than its newest.
    fn absorb(&mut self, other: Collector) {
        for s in other.series {
            let slot = slot_for(&mut self.index, &mut self.series, s.labels);
            if let Some(t) = self.series.get_mut(slot) {
                if !s.sorted || t.ts.last().zip(s.ts.first()).is_some_and(|(a, b)| a > b) {
                    t.sorted = false;
                }
                t.ts.extend(s.ts);
                t.values.extend(s.values);
            }
        }
    }
}

/// Runs every stream through `job` on up to one thread per core (streams are
/// independent until their samples meet in a series) and returns the series sorted by
/// labels, so the answer does not depend on which thread took which stream.
fn collect_parallel(
    streams: Vec<StreamData>,
    job: &StreamJob<'_>,
) -> Result<Vec<SeriesSamples>, EvalError> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(streams.len())
        .max(1);
    let queue = std::sync::Mutex::new(streams.into_iter());
    let next = || queue.lock().ok().and_then(|mut q| q.next());
    let run = || -> Result<Collector, EvalError> {
        let mut pipeline = job.pipeline.clone();
        let mut c = Collector::default();
        while let Some(stream) = next() {
            collect_stream(stream, job, &mut pipeline, &mut c)?;
        }
        Ok(c)
    };
    let mut collectors = if workers == 1 {
        vec![run()?]
    } else {
        let results: Vec<Result<Collector, EvalError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers).map(|_| scope.spawn(run)).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join().unwrap_or_else(|_| {
                        Err(EvalError::InvalidParams("a query worker panicked".into()))
                    })
                })
                .collect()
        });
        results.into_iter().collect::<Result<Vec<_>, _>>()?
    };
    let mut all = collectors.pop().unwrap_or_default();
    for c in collectors {
        all.absorb(c);
    }
    let mut series = all.series;
    series.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(series)
}

/// Turns one stream's lines into samples of `c`'s series.
fn collect_stream(
    stream: StreamData,
    job: &StreamJob<'_>,
    pipeline: &mut Pipeline,
    c: &mut Collector,
) -> Result<(), EvalError> {
    let StreamJob {
        agg,
        grouping,
        from,
        to,
        absent,
        simple,
        ..
    } = *job;
    let (series, index) = (&mut c.series, &mut c.index);
    let stream_labels = stream.labels;
    let stream_key = if absent {
        Vec::new()
    } else {
        apply_grouping(&stream_labels.pairs().to_vec(), grouping)
    };
    let mut slots = SlotCache::new(stream_key.clone(), grouping, simple, absent);
    // Blocks the store counted instead of reading (no pipeline, one window): one sample
    // per metadata set, weighted by its lines or bytes.
    for count in &stream.counts {
        let mut lb = LabelsBuilder::new(&stream_labels);
        lb.reset(&count.metadata);
        // Only label stages (drop/keep) can be left: they act on labels alone.
        if pipeline.process(count.timestamp_ns, "", &mut lb).is_none() {
            continue;
        }
        let value = match agg.op {
            RangeOp::BytesOverTime | RangeOp::BytesRate => count.bytes as f64,
            _ => count.lines as f64,
        };
        let slot = slots.slot(&lb, grouping, index, series);
        push_sample(series, slot, count.timestamp_ns, value);
    }
    for batch in stream.batches {
        let batch = batch?;
        if let (Some(cache), Some(origin)) = (&job.cache, batch.origin) {
            // A batch the store answered from the cache has no entries to read.
            let found = match &batch.cached {
                Some(CachedSamples(hit)) => Some(hit.clone()),
                None => cache
                    .cache
                    .get(origin, cache.key.hash, &cache.key.extraction),
            };
            let samples = match found {
                Some(hit) => Some(hit),
                None => {
                    let built =
                        block_samples(batch.as_slice(), job, pipeline, &stream_labels, &stream_key)
                            .map(|s| Arc::new(BlockSamples::new(cache.key.extraction.clone(), s)));
                    if let Some(b) = &built {
                        cache.cache.put(origin, cache.key.hash, b.clone());
                    }
                    built
                }
            };
            // Without samples the block raised an error: its lines are read below, where
            // the error is reported if the line lies in the query's range.
            if let Some(samples) = samples {
                add_block_samples(&samples, from, to, index, series);
                continue;
            }
        }
        // One builder per batch: its label storage is reused line after line.
        let mut lb = LabelsBuilder::new(&stream_labels);
        for entry in batch.as_slice() {
            let ts = entry.timestamp_ns;
            if ts <= from || ts > to {
                continue;
            }
            if let Some(value) = line_sample(job, pipeline, entry, &mut lb)? {
                let slot = slots.slot(&lb, grouping, index, series);
                push_sample(series, slot, ts, value);
            }
        }
    }
    Ok(())
}

/// The sample one entry gives, its final labels left in `lb`: `None` when the pipeline
/// or the unwrap drops the line, `Err` for an error the query must report.
fn line_sample<'a>(
    job: &StreamJob<'_>,
    pipeline: &mut Pipeline,
    entry: &'a Entry,
    lb: &mut LabelsBuilder<'a>,
) -> Result<Option<f64>, EvalError> {
    lb.reset(&entry.structured_metadata);
    let Some(line) = pipeline.process(entry.timestamp_ns, &entry.line, lb) else {
        return Ok(None);
    };
    let value = match &job.agg.range.unwrap {
        None => match job.agg.op {
            RangeOp::BytesOverTime | RangeOp::BytesRate => line.len() as f64,
            _ => 1.0,
        },
        Some(u) => {
            let converted = match lb.get(&u.label) {
                Some(raw) if !raw.is_empty() => convert(u.conversion, raw),
                _ => return Ok(None),
            };
            let v = match converted {
                Ok(v) => v,
                Err(details) => {
                    lb.set_error_if_none(SAMPLE_EXTRACTION_ERR, details);
                    0.0
                }
            };
            if !job.post_filters.iter().all(|f| f.keep(lb)) {
                return Ok(None);
            }
            lb.delete(&u.label);
            v
        }
    };
    if let Some(kind) = lb.error() {
        if !job.preserve {
            return Err(EvalError::SeriesError {
                kind: kind.to_owned(),
                series: print_labels(&lb.labels()),
            });
        }
    }
    Ok(Some(value))
}

/// Whether every sample of `job` is a line count of 1 (none needs storing).
fn counts_lines(job: &StreamJob<'_>) -> bool {
    job.agg.range.unwrap.is_none()
        && !matches!(job.agg.op, RangeOp::BytesOverTime | RangeOp::BytesRate)
}

/// The samples of every entry of one whole block, whatever its time, per series; `None`
/// when a line raised an error the query reports (such blocks are not cached).
fn block_samples(
    entries: &[Entry],
    job: &StreamJob<'_>,
    pipeline: &mut Pipeline,
    stream_labels: &LabelSet,
    stream_key: &Labels,
) -> Option<Vec<CachedSeries>> {
    let mut local = Collector::default();
    let mut slots = SlotCache::new(stream_key.clone(), job.grouping, job.simple, job.absent);
    let mut lb = LabelsBuilder::new(stream_labels);
    for entry in entries {
        if let Some(value) = line_sample(job, pipeline, entry, &mut lb).ok()? {
            let slot = slots.slot(&lb, job.grouping, &mut local.index, &mut local.series);
            push_sample(&mut local.series, slot, entry.timestamp_ns, value);
        }
    }
    let counts = counts_lines(job);
    Some(
        local
            .series
            .into_iter()
            .map(|s| CachedSeries {
                labels: s.labels,
                ts: s.ts,
                values: (!counts).then_some(s.values),
            })
            .collect(),
    )
}

/// Adds a block's samples in `(from, to]` to the series.
fn add_block_samples(
    samples: &BlockSamples,
    from: i64,
    to: i64,
    index: &mut HashMap<Labels, usize>,
    series: &mut Vec<SeriesSamples>,
) {
    for s in &samples.series {
        // A block's entries, and so each series' samples, are in time order.
        let lo = s.ts.partition_point(|&t| t <= from);
        let hi = s.ts.partition_point(|&t| t <= to);
        let Some(ts) = s.ts.get(lo..hi).filter(|t| !t.is_empty()) else {
            continue;
        };
        let slot = slot_for(index, series, s.labels.clone());
        let Some(t) = series.get_mut(slot) else {
            continue;
        };
        if t.ts.last().zip(ts.first()).is_some_and(|(a, b)| a > b) {
            t.sorted = false;
        }
        t.ts.extend_from_slice(ts);
        match &s.values {
            Some(v) => t
                .values
                .extend_from_slice(v.get(lo..hi).unwrap_or_default()),
            None => t.values.resize(t.values.len() + ts.len(), 1.0),
        }
    }
}

/// The edges of every window `(t - offset - range, t - offset]` of `grid`, ascending
/// and distinct: each window is a union of spans between consecutive edges.
fn window_edges(grid: &StepGrid, range: i64, offset: i64) -> Vec<i64> {
    let mut edges: Vec<i64> = (0..grid.len())
        .flat_map(|i| {
            let end = grid.timestamp_ns(i) - offset;
            [end - range, end]
        })
        .collect();
    edges.sort_unstable();
    edges.dedup();
    edges
}

fn push_sample(series: &mut [SeriesSamples], slot: usize, ts: i64, value: f64) {
    if let Some(s) = series.get_mut(slot) {
        if s.ts.last().is_some_and(|last| *last > ts) {
            s.sorted = false;
        }
        s.ts.push(ts);
        s.values.push(value);
    }
}

/// A hasher for keys that are hashes already: a `u64` key is its own hash (SipHash over
/// a delta's hash was most of a cache lookup).
#[derive(Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Which series a line of one stream goes to, remembered per stream.
struct SlotCache {
    /// The series of lines whose labels are the stream's own.
    stream_key: Labels,
    stream_slot: Option<usize>,
    /// Lines whose labels differ from the stream's (structured metadata, parsed labels)
    /// keyed by that difference: most lines repeat a few deltas, so the full label set
    /// is built once per delta, not once per line. `deltas` holds each distinct delta
    /// with its series; `by_hash` finds them by [`LabelsBuilder::delta_hash`].
    deltas: Vec<(LabelsDelta, usize)>,
    by_hash: HashMap<u64, Vec<usize>, BuildHasherDefault<PreHashed>>,
    /// The delta of the previous line: consecutive lines often share one, and comparing
    /// with it costs less than hashing.
    last: Option<usize>,
    /// Under `by (...)` (up to `MAX_BY_NAMES` names, not the error labels), lines are
    /// keyed by the values of the grouping labels instead of their delta.
    by: Option<ByKeys>,
    simple: bool,
    absent: bool,
}

/// The most names a `by (...)` may have for its lines to be keyed by their values.
const MAX_BY_NAMES: usize = 8;

/// Series keyed by the values of a `by (...)` grouping's labels: [`LabelsBuilder::get`]
/// of each name answers what `apply_grouping` of the line's full label set keeps (one
/// value per name, or none), without building that set.
struct ByKeys {
    /// The grouping's names, sorted and distinct: the order of the key's labels.
    names: Vec<String>,
    /// Each distinct key with its series.
    keys: Vec<(Vec<Option<String>>, usize)>,
    by_hash: HashMap<u64, Vec<usize>, BuildHasherDefault<PreHashed>>,
    last: Option<usize>,
}

impl ByKeys {
    /// Keys for `by (names)`, unless a name is an error label: a line's `__error__` may
    /// be both its error and a parsed key of that name, which only the full set shows.
    fn new(names: &[String]) -> Option<Self> {
        if names
            .iter()
            .any(|n| n == ERROR_LABEL || n == crate::log::ERROR_DETAILS_LABEL)
        {
            return None;
        }
        let mut names = names.to_vec();
        names.sort();
        names.dedup();
        if names.len() > MAX_BY_NAMES {
            return None;
        }
        Some(ByKeys {
            names,
            keys: Vec::new(),
            by_hash: HashMap::default(),
            last: None,
        })
    }

    fn slot(
        &mut self,
        lb: &LabelsBuilder<'_>,
        index: &mut HashMap<Labels, usize>,
        series: &mut Vec<SeriesSamples>,
    ) -> usize {
        let mut values: [Option<&str>; MAX_BY_NAMES] = [None; MAX_BY_NAMES];
        for (v, n) in values.iter_mut().zip(&self.names) {
            *v = lb.get(n);
        }
        let values = values.get(..self.names.len()).unwrap_or_default();
        let matches =
            |key: &[Option<String>]| key.iter().zip(values).all(|(k, v)| k.as_deref() == *v);
        if let Some((key, slot)) = self.last.and_then(|i| self.keys.get(i)) {
            if matches(key) {
                return *slot;
            }
        }
        let hash = {
            use std::hash::BuildHasher;
            let mut h = foldhash::fast::FixedState::with_seed(0x6c6f6465).build_hasher();
            for v in values {
                match v {
                    Some(v) => {
                        h.write_u8(1);
                        h.write(v.as_bytes());
                    }
                    None => h.write_u8(0),
                }
            }
            h.finish()
        };
        if let Some(ids) = self.by_hash.get(&hash) {
            for &i in ids {
                if let Some((key, slot)) = self.keys.get(i) {
                    if matches(key) {
                        self.last = Some(i);
                        return *slot;
                    }
                }
            }
        }
        let key: Vec<Option<String>> = values.iter().map(|v| v.map(str::to_owned)).collect();
        let labels: Labels = self
            .names
            .iter()
            .zip(&key)
            .filter_map(|(n, v)| Some((n.clone(), v.clone()?)))
            .collect();
        let slot = slot_for(index, series, labels);
        if self.keys.len() < MAX_DELTAS_PER_STREAM {
            self.by_hash.entry(hash).or_default().push(self.keys.len());
            self.last = Some(self.keys.len());
            self.keys.push((key, slot));
        }
        slot
    }
}

impl SlotCache {
    fn new(stream_key: Labels, grouping: &Option<Grouping>, simple: bool, absent: bool) -> Self {
        let by = match grouping {
            Some(Grouping::By(names)) if !absent => ByKeys::new(names),
            _ => None,
        };
        SlotCache {
            stream_key,
            stream_slot: None,
            deltas: Vec::new(),
            by_hash: HashMap::default(),
            last: None,
            by,
            simple,
            absent,
        }
    }

    fn slot(
        &mut self,
        lb: &LabelsBuilder<'_>,
        grouping: &Option<Grouping>,
        index: &mut HashMap<Labels, usize>,
        series: &mut Vec<SeriesSamples>,
    ) -> usize {
        if self.simple && lb.is_unchanged() {
            if let Some(s) = self.stream_slot {
                return s;
            }
            let s = slot_for(index, series, self.stream_key.clone());
            self.stream_slot = Some(s);
            return s;
        }
        if self.absent {
            return slot_for(index, series, Vec::new());
        }
        if let Some(by) = &mut self.by {
            return by.slot(lb, index, series);
        }
        if let Some((d, slot)) = self.last.and_then(|i| self.deltas.get(i)) {
            if lb.delta_matches(d) {
                return *slot;
            }
        }
        let hash = lb.delta_hash();
        if let Some(ids) = self.by_hash.get(&hash) {
            for &i in ids {
                if let Some((d, slot)) = self.deltas.get(i) {
                    if lb.delta_matches(d) {
                        self.last = Some(i);
                        return *slot;
                    }
                }
            }
        }
        let slot = slot_for(index, series, apply_grouping(&lb.labels(), grouping));
        if self.deltas.len() < MAX_DELTAS_PER_STREAM {
            self.by_hash
                .entry(hash)
                .or_default()
                .push(self.deltas.len());
            self.last = Some(self.deltas.len());
            self.deltas.push((lb.delta(), slot));
        }
        slot
    }
}

fn slot_for(
    index: &mut HashMap<Labels, usize>,
    series: &mut Vec<SeriesSamples>,
    key: Labels,
) -> usize {
    if let Some(&i) = index.get(&key) {
        return i;
    }
    series.push(SeriesSamples {
        labels: key.clone(),
        ts: Vec::new(),
        values: Vec::new(),
        sorted: true,
    });
    index.insert(key, series.len() - 1);
    series.len() - 1
}

fn absent_matrix(
    agg: &RangeAggregation,
    series: &[SeriesSamples],
    grid: &StepGrid,
    range: i64,
    offset: i64,
) -> Matrix {
    let mut all: Vec<i64> = series.iter().flat_map(|s| s.ts.iter().copied()).collect();
    all.sort_unstable();
    let mut points = Vec::new();
    for step in 0..grid.len() {
        let t = grid.timestamp_ns(step) - offset;
        let lo = all.partition_point(|&ts| ts <= t - range);
        let hi = all.partition_point(|&ts| ts <= t);
        if lo == hi {
            points.push((step as u32, 1.0));
        }
    }
    let mut m = Matrix::default();
    if !points.is_empty() {
        m.series.push(MSeries {
            labels: absent_labels(agg),
            points,
        });
    }
    m
}

fn sweep(
    agg: &RangeAggregation,
    ts: &[i64],
    values: &[f64],
    grid: &StepGrid,
    range: i64,
    offset: i64,
) -> Vec<(u32, f64)> {
    let mut points = Vec::new();
    let mut lo = 0usize;
    let mut hi = 0usize;
    let range_secs = range as f64 / 1e9;
    let mut scratch = Vec::new();
    for step in 0..grid.len() {
        let t = grid.timestamp_ns(step) - offset;
        while hi < ts.len() && ts[hi] <= t {
            hi += 1;
        }
        while lo < hi && ts[lo] <= t - range {
            lo += 1;
        }
        if lo == hi {
            continue;
        }
        let w = &values[lo..hi];
        let v = match agg.op {
            // Without unwrap every sample is a count of lines (1 per line, or a whole
            // block's lines when the store counted it), so both sum their samples.
            RangeOp::CountOverTime if agg.range.unwrap.is_some() => w.len() as f64,
            RangeOp::CountOverTime => w.iter().sum(),
            RangeOp::Rate => w.iter().sum::<f64>() / range_secs,
            RangeOp::BytesOverTime | RangeOp::SumOverTime => w.iter().sum(),
            RangeOp::BytesRate => w.iter().sum::<f64>() / range_secs,
            RangeOp::AvgOverTime => avg(w),
            RangeOp::MinOverTime => min_max(w, false),
            RangeOp::MaxOverTime => min_max(w, true),
            RangeOp::StdvarOverTime => stdvar(w),
            RangeOp::StddevOverTime => stdvar(w).sqrt(),
            RangeOp::QuantileOverTime => quantile_with(agg.param.unwrap_or(0.0), w, &mut scratch),
            RangeOp::FirstOverTime => w[0],
            RangeOp::LastOverTime => w[w.len() - 1],
            RangeOp::RateCounter => rate_counter(&ts[lo..hi], w, t, range),
            RangeOp::AbsentOverTime => 1.0,
        };
        points.push((step as u32, v));
    }
    points
}

/// Whether every window's value is a sum of whole numbers (lines, line bytes, and the
/// stores' counts of them): such sums come out the same in any order of addition, so
/// the samples need no sorting (see [`sweep_sums`]).
fn sums_counts(agg: &RangeAggregation) -> bool {
    agg.range.unwrap.is_none()
        && matches!(
            agg.op,
            RangeOp::CountOverTime | RangeOp::Rate | RangeOp::BytesOverTime | RangeOp::BytesRate
        )
}

/// [`sweep`] for [`sums_counts`] aggregations, over samples in any order: each sample is
/// added to the span between window `edges` ([`window_edges`]) holding it, and a
/// window's value is the sum of its spans (a difference of running sums, exact for whole
/// numbers below 2^53). Windows without samples emit nothing, as in `sweep`.
fn sweep_sums(
    agg: &RangeAggregation,
    ts: &[i64],
    values: &[f64],
    grid: &StepGrid,
    offset: i64,
    range: i64,
    edges: &[i64],
) -> Vec<(u32, f64)> {
    // Span i is (edges[i - 1], edges[i]]; totals[k] and counts[k] end up holding the
    // samples of spans below k.
    let mut totals = vec![0.0f64; edges.len() + 2];
    let mut counts = vec![0u64; edges.len() + 2];
    let span_of = |t: i64| edges.partition_point(|&e| e < t);
    let mut last = 0usize;
    for (&t, &v) in ts.iter().zip(values) {
        // Samples come in runs of ascending time: most share the previous one's span.
        let above = last
            .checked_sub(1)
            .is_none_or(|i| edges.get(i).is_some_and(|&e| e < t));
        let below = edges.get(last).is_none_or(|&e| t <= e);
        let span = if above && below { last } else { span_of(t) };
        last = span;
        if let (Some(total), Some(count)) = (totals.get_mut(span + 1), counts.get_mut(span + 1)) {
            *total += v;
            *count += 1;
        }
    }
    for k in 1..totals.len() {
        totals[k] += totals[k - 1];
        counts[k] += counts[k - 1];
    }
    let range_secs = range as f64 / 1e9;
    let mut points = Vec::new();
    for step in 0..grid.len() {
        let t = grid.timestamp_ns(step) - offset;
        // Both ends are edges: the window is spans first + 1 ..= last.
        let (Ok(first), Ok(last)) = (edges.binary_search(&(t - range)), edges.binary_search(&t))
        else {
            continue;
        };
        let n = counts[last + 1] - counts[first + 1];
        if n == 0 {
            continue;
        }
        let sum = totals[last + 1] - totals[first + 1];
        let v = match agg.op {
            RangeOp::Rate | RangeOp::BytesRate => sum / range_secs,
            _ => sum,
        };
        points.push((step as u32, v));
    }
    points
}

/// Prometheus' incremental mean, which keeps ±Inf stable.
pub(crate) fn avg(w: &[f64]) -> f64 {
    let mut mean = 0.0f64;
    let mut count = 0.0f64;
    for &v in w {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        mean += v / count - mean / count;
    }
    mean
}

/// Min or max where a NaN is replaced by any later value.
pub(crate) fn min_max(w: &[f64], max: bool) -> f64 {
    let mut acc = w[0];
    for &v in &w[1..] {
        if acc.is_nan() || (max && v > acc) || (!max && v < acc) {
            acc = v;
        }
    }
    acc
}

/// Population variance (Welford).
pub(crate) fn stdvar(w: &[f64]) -> f64 {
    let (mut count, mut mean, mut aux) = (0.0f64, 0.0f64, 0.0f64);
    for &v in w {
        count += 1.0;
        let delta = v - mean;
        mean += delta / count;
        aux += delta * (v - mean);
    }
    aux / count
}

/// Prometheus quantile: sort, rank `q·(n-1)`, linear interpolation.
#[cfg(test)]
pub(crate) fn quantile(q: f64, w: &[f64]) -> f64 {
    quantile_with(q, w, &mut Vec::new())
}

/// [`quantile`] with `scratch` as the buffer, so a sweep allocates once. Only the two
/// ranks the interpolation reads are put in place (a selection, not a sort): the values
/// there are the ones a full sort by `total_cmp` puts there, so the result is the same.
pub(crate) fn quantile_with(q: f64, w: &[f64], scratch: &mut Vec<f64>) -> f64 {
    if w.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    scratch.clear();
    scratch.extend_from_slice(w);
    let n = scratch.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    let (lo, hi) = (lower as usize, upper as usize);
    let (_, &mut at_lo, above) = scratch.select_nth_unstable_by(lo, f64::total_cmp);
    let at_hi = if hi > lo {
        above
            .iter()
            .copied()
            .min_by(f64::total_cmp)
            .unwrap_or(at_lo)
    } else {
        at_lo
    };
    at_lo * (1.0 - weight) + at_hi * weight
}

/// Prometheus `rate()` over counter values: resets handled, extrapolated to the window
/// edges; fewer than two samples give 0.
fn rate_counter(ts: &[i64], w: &[f64], window_end: i64, range: i64) -> f64 {
    if w.len() < 2 {
        return 0.0;
    }
    let first = w[0];
    let last = w[w.len() - 1];
    let mut result = last - first;
    let mut prev = first;
    for &v in &w[1..] {
        if v < prev {
            result += prev;
        }
        prev = v;
    }
    let range_start = window_end - range;
    let secs = |ns: i64| ns as f64 / 1e9;
    let mut to_start = secs(ts[0] - range_start);
    let to_end = secs(window_end - ts[ts.len() - 1]);
    let sampled = secs(ts[ts.len() - 1] - ts[0]);
    if sampled <= 0.0 {
        return 0.0;
    }
    let avg_between = sampled / (w.len() - 1) as f64;
    if result > 0.0 && first >= 0.0 {
        let to_zero = sampled * (first / result);
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let threshold = avg_between * 1.1;
    let mut interval = sampled;
    interval += if to_start < threshold {
        to_start
    } else {
        avg_between / 2.0
    };
    interval += if to_end < threshold {
        to_end
    } else {
        avg_between / 2.0
    };
    result * (interval / sampled) / secs(range)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_interpolates_between_ranks_and_clamps_out_of_range_phi() {
        assert_eq!(quantile(0.5, &[1.0, 3.0, 2.0]), 2.0);
        assert_eq!(quantile(0.75, &[1.0, 2.0, 3.0, 4.0]), 3.25);
        assert_eq!(quantile(-1.0, &[1.0]), f64::NEG_INFINITY);
        assert_eq!(quantile(2.0, &[1.0]), f64::INFINITY);
    }

    /// The quantile as the reference formula computes it: a full sort.
    fn sorted_quantile(q: f64, w: &[f64]) -> f64 {
        let mut sorted = w.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len() as f64;
        let rank = q * (n - 1.0);
        let lower = rank.floor().max(0.0);
        let upper = (lower + 1.0).min(n - 1.0);
        let weight = rank - rank.floor();
        sorted[lower as usize] * (1.0 - weight) + sorted[upper as usize] * weight
    }

    mod properties {
        use super::*;
        use crate::log::ERROR_DETAILS_LABEL;
        use lode_push::LabelSet;
        use proptest::prelude::*;

        fn value() -> impl Strategy<Value = f64> {
            prop_oneof![
                prop::sample::select(vec![
                    0.0,
                    -0.0,
                    1.0,
                    2.5,
                    -3.0,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                    f64::NAN,
                    -f64::NAN,
                ]),
                -1e6f64..1e6,
            ]
        }

        /// A step that changes a line's labels the way pipeline stages do.
        #[derive(Clone, Debug)]
        enum Change {
            Parse(&'static str, &'static str),
            Set(&'static str, &'static str),
            Delete(&'static str),
            Error(&'static str),
        }

        const NAMES: [&str; 7] = [
            "app",
            "pod",
            "level",
            "path",
            "app_extracted",
            "detected_level",
            "__error__",
        ];
        const VALUES: [&str; 4] = ["", "a", "b", "info"];

        fn change() -> impl Strategy<Value = Change> {
            let name = prop::sample::select(NAMES.to_vec());
            let value = prop::sample::select(VALUES.to_vec());
            prop_oneof![
                (name.clone(), value.clone()).prop_map(|(n, v)| Change::Parse(n, v)),
                (name.clone(), value.clone()).prop_map(|(n, v)| Change::Set(n, v)),
                name.prop_map(Change::Delete),
                value.prop_map(Change::Error),
            ]
        }

        fn line() -> impl Strategy<Value = (Vec<(String, String)>, Vec<Change>)> {
            let meta = (
                prop::sample::select(vec!["detected_level", "level", "app", "trace"]),
                prop::sample::select(VALUES.to_vec()),
            )
                .prop_map(|(k, v)| (k.to_owned(), v.to_owned()));
            (
                prop::collection::vec(meta, 0..3),
                prop::collection::vec(change(), 0..5),
            )
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            #[test]
            fn summed_spans_equal_the_sorted_sweep(
                samples in prop::collection::vec((0i64..4_000, 0u32..3_000), 0..300),
                op in prop::sample::select(vec!["count_over_time", "rate", "bytes_over_time", "bytes_rate"]),
                range in prop::sample::select(vec![1i64, 7, 100, 250, 1_000]),
                step in prop::sample::select(vec![0i64, 1, 13, 60, 500]),
                offset in prop::sample::select(vec![0i64, 5, 120]),
                start in 0i64..2_000,
            ) {
                let q = format!(r#"{op}({{app="a"}}[{range}s] offset {offset}s)"#);
                let Ok(crate::syntax::ast::Expr::Metric(crate::syntax::ast::MetricExpr::RangeAggregation(agg))) =
                    crate::parse_expr(&q)
                else {
                    panic!("{q} is not a range aggregation");
                };
                let (sec, (range, offset)) = (1_000_000_000i64, (range * 1_000_000_000, offset * 1_000_000_000));
                let params = QueryParams::range(start * sec, (start + 1_000) * sec, step * sec);
                let grid = StepGrid::new(&params);
                let ts: Vec<i64> = samples.iter().map(|(t, _)| t * sec / 2).collect();
                let values: Vec<f64> = samples.iter().map(|(_, v)| f64::from(*v)).collect();
                let edges = window_edges(&grid, range, offset);
                let got = sweep_sums(&agg, &ts, &values, &grid, offset, range, &edges);
                let mut pairs: Vec<(i64, f64)> = ts.iter().copied().zip(values.iter().copied()).collect();
                pairs.sort_by_key(|p| p.0);
                let (ts, values): (Vec<i64>, Vec<f64>) = pairs.into_iter().unzip();
                let want = sweep(&agg, &ts, &values, &grid, range, offset);
                prop_assert_eq!(got, want);
            }

            #[test]
            fn selected_quantile_equals_the_sorted_one(
                w in prop::collection::vec(value(), 1..40),
                q in prop_oneof![Just(0.0), Just(0.5), Just(0.99), Just(1.0), 0.0f64..=1.0],
            ) {
                let got = quantile_with(q, &w, &mut Vec::new());
                let want = sorted_quantile(q, &w);
                prop_assert!(got.to_bits() == want.to_bits() || got.is_nan() && want.is_nan(),
                    "{q} of {w:?}: {got} != {want}");
            }

            #[test]
            fn lines_keyed_by_grouping_values_land_in_the_series_of_their_full_labels(
                by in prop::collection::vec(prop::sample::select(NAMES[..6].to_vec()), 0..4),
                lines in prop::collection::vec(line(), 1..12),
            ) {
                let stream = LabelSet::from_pairs([("app", "x"), ("pod", "p1")]).unwrap();
                let grouping = Some(Grouping::By(by.iter().map(|n| (*n).to_owned()).collect()));
                let stream_key = apply_grouping(&stream.pairs().to_vec(), &grouping);
                let mut cache = SlotCache::new(stream_key, &grouping, false, false);
                prop_assert!(cache.by.is_some());
                let (mut index, mut series) = (HashMap::new(), Vec::new());
                for (meta, changes) in &lines {
                    let mut lb = LabelsBuilder::new(&stream);
                    lb.reset(meta);
                    for c in changes {
                        match c {
                            Change::Parse(n, v) => lb.add_extracted(n, v),
                            Change::Set(n, v) => lb.set(n, (*v).to_owned()),
                            Change::Delete(n) => lb.delete(n),
                            Change::Error(v) => lb.set_error(v, ""),
                        }
                    }
                    let slot = cache.slot(&lb, &grouping, &mut index, &mut series);
                    prop_assert_eq!(&series[slot].labels, &apply_grouping(&lb.labels(), &grouping));
                }
                let errors = Some(Grouping::By(vec![ERROR_LABEL.to_owned(), ERROR_DETAILS_LABEL.to_owned()]));
                prop_assert!(SlotCache::new(Vec::new(), &errors, false, false).by.is_none());
            }
        }
    }

    #[test]
    fn stdvar_is_population_variance_and_min_max_skip_leading_nan() {
        assert_eq!(stdvar(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]), 4.0);
        assert_eq!(min_max(&[f64::NAN, 3.0, 1.0], false), 1.0);
        assert_eq!(min_max(&[f64::NAN, 3.0, 1.0], true), 3.0);
        assert_eq!(avg(&[1.0, 2.0, 3.0, 4.0]), 2.5);
    }

    #[test]
    fn rate_counter_handles_resets_and_extrapolates() {
        let s = 1_000_000_000i64;
        // Counter 0,10,20 at 10s,20s,30s in window (0s,40s]: +20 over 20s sampled,
        // extrapolated to start via zero-crossing (10s) and end (+10s) => 40 over 40s.
        let v = rate_counter(
            &[10 * s, 20 * s, 30 * s],
            &[0.0, 10.0, 20.0],
            40 * s,
            40 * s,
        );
        assert!((v - 0.75).abs() < 1e-12, "{v}");
        // A reset from 20 to 5 counts the 20 already seen.
        let v = rate_counter(&[10 * s, 20 * s], &[20.0, 5.0], 20 * s, 10 * s);
        assert!(v > 0.0);
        assert_eq!(rate_counter(&[s], &[1.0], s, s), 0.0);
    }
}
