//! Log queries: select streams, run the pipeline per line, k-way merge by time in the
//! requested direction, stop at `limit`, group the lines into streams by final labels.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

use lode_push::LabelSet;

use super::result::{EntryLabels, LogEntry, QueryResult, Stream};
use super::source::{BatchIter, Direction, EntryBatch, LogSource, SelectRequest};
use super::{EvalError, QueryParams};
use crate::log::{LabelBuffers, Labels, LabelsBuilder, Pipeline};
use crate::syntax::ast::{LineFilter, LogSelector, Stage};

/// The line filters at the head of a pipeline: every returned line passes them, so a
/// store may use them to skip blocks.
pub(crate) fn leading_line_filters(stages: &[Stage]) -> Vec<LineFilter> {
    stages
        .iter()
        .map_while(|s| match s {
            Stage::LineFilter(f) => Some(f.clone()),
            _ => None,
        })
        .collect()
}

struct Cursor {
    labels: LabelSet,
    batches: BatchIter,
    batch: Option<EntryBatch>,
    // Next position inside `batch`, counted in the query direction.
    next: usize,
    // Label storage reused from line to line.
    buffers: LabelBuffers,
}

struct Head {
    ts: i64,
    cursor: usize,
    line: String,
    key: Labels,
    categorized: Option<EntryLabels>,
}

struct Ordered {
    head: Head,
    forward: bool,
}

impl PartialEq for Ordered {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Ordered {}
impl PartialOrd for Ordered {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ordered {
    // BinaryHeap pops the greatest: forward wants the oldest, backward the newest; ties
    // go to the stream that sorts first, so answers are deterministic.
    fn cmp(&self, other: &Self) -> Ordering {
        let by_time = self.head.ts.cmp(&other.head.ts);
        let by_time = if self.forward {
            by_time.reverse()
        } else {
            by_time
        };
        by_time.then_with(|| other.head.cursor.cmp(&self.head.cursor))
    }
}

impl Cursor {
    fn advance(
        &mut self,
        idx: usize,
        pipeline: &Pipeline,
        params: &QueryParams,
        fast_key: Option<&Labels>,
    ) -> Result<Option<Head>, EvalError> {
        let forward = params.direction == Direction::Forward;
        loop {
            let batch = match &self.batch {
                Some(b) if self.next < b.as_slice().len() => b,
                _ => match self.batches.next() {
                    Some(b) => {
                        self.batch = Some(b?);
                        self.next = 0;
                        continue;
                    }
                    None => return Ok(None),
                },
            };
            let slice = batch.as_slice();
            let pos = if forward {
                self.next
            } else {
                slice.len() - 1 - self.next
            };
            self.next += 1;
            let Some(entry) = slice.get(pos) else {
                continue;
            };
            if entry.timestamp_ns < params.start_ns || entry.timestamp_ns >= params.end_ns {
                continue;
            }
            let mut lb =
                LabelsBuilder::with_buffers(&self.labels, std::mem::take(&mut self.buffers));
            lb.reset(&entry.structured_metadata);
            let Some(line) = pipeline.process(entry.timestamp_ns, &entry.line, &mut lb) else {
                self.buffers = lb.into_buffers();
                continue;
            };
            let (key, categorized) = if params.categorize_labels {
                let c = lb.categorized();
                (
                    c.stream,
                    Some(EntryLabels {
                        structured_metadata: c.structured_metadata,
                        parsed: c.parsed,
                    }),
                )
            } else if let (Some(k), true) = (fast_key, lb.is_unchanged()) {
                (k.clone(), None)
            } else {
                (lb.labels(), None)
            };
            let line = line.into_owned();
            self.buffers = lb.into_buffers();
            return Ok(Some(Head {
                ts: entry.timestamp_ns,
                cursor: idx,
                line,
                key,
                categorized,
            }));
        }
    }
}

pub(crate) fn eval_log(
    sel: &LogSelector,
    params: &QueryParams,
    source: &dyn LogSource,
) -> Result<QueryResult, EvalError> {
    let pipeline = Pipeline::new(&sel.pipeline)?;
    let hint = leading_line_filters(&sel.pipeline);
    let req = SelectRequest {
        count_edges: None,
        any_order: false,
        samples: None,
        matchers: &sel.matchers,
        start_ns: params.start_ns,
        end_ns: params.end_ns,
        direction: params.direction,
        line_filters: &hint,
    };
    let mut streams = source.select(&req)?;
    streams.sort_by(|a, b| a.labels.cmp(&b.labels));
    let mut cursors: Vec<Cursor> = streams
        .into_iter()
        .map(|s| Cursor {
            labels: s.labels,
            batches: s.batches,
            batch: None,
            next: 0,
            buffers: LabelBuffers::default(),
        })
        .collect();
    let fast_keys: Vec<Labels> = cursors.iter().map(|c| c.labels.pairs().to_vec()).collect();
    let forward = params.direction == Direction::Forward;
    let mut heap = BinaryHeap::with_capacity(cursors.len());
    for (i, c) in cursors.iter_mut().enumerate() {
        if let Some(head) = c.advance(i, &pipeline, params, fast_keys.get(i))? {
            heap.push(Ordered { head, forward });
        }
    }
    // foldhash, not SipHash: every returned line hashes its whole label set here.
    let mut groups: HashMap<Labels, Vec<LogEntry>, foldhash::fast::RandomState> =
        HashMap::default();
    let mut taken = 0usize;
    let mut next_allowed: Option<i64> = None;
    while taken < params.limit {
        let Some(Ordered { head, .. }) = heap.pop() else {
            break;
        };
        let idx = head.cursor;
        let admitted = match (params.interval_ns > 0, next_allowed) {
            (false, _) | (true, None) => true,
            (true, Some(bound)) => {
                if forward {
                    head.ts >= bound
                } else {
                    head.ts <= bound
                }
            }
        };
        if admitted {
            if params.interval_ns > 0 {
                next_allowed = Some(if forward {
                    head.ts.saturating_add(params.interval_ns)
                } else {
                    head.ts.saturating_sub(params.interval_ns)
                });
            }
            groups.entry(head.key).or_default().push(LogEntry {
                timestamp_ns: head.ts,
                line: head.line,
                categorized: head.categorized,
            });
            taken += 1;
        }
        if let Some(c) = cursors.get_mut(idx) {
            if let Some(next) = c.advance(idx, &pipeline, params, fast_keys.get(idx))? {
                heap.push(Ordered {
                    head: next,
                    forward,
                });
            }
        }
    }
    let mut out: Vec<(String, Stream)> = groups
        .into_iter()
        .map(|(labels, entries)| {
            let printed = print_labels(&labels);
            (printed, Stream { labels, entries })
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(QueryResult::Streams {
        streams: out.into_iter().map(|(_, s)| s).collect(),
        categorized: params.categorize_labels,
    })
}

/// `{a="1", b="2"}`: the label string Loki sorts streams by.
pub(crate) fn print_labels(labels: &Labels) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in labels.iter().enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        s.push_str(k);
        s.push('=');
        let _ = lode_push::labels::write_quoted(&mut s, v);
    }
    s.push('}');
    s
}
