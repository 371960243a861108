//! Count columns: a block's columns in the form line counts read them.
//!
//! Owns decoding a block's columns frame (never its lines) into [`CountColumns`] — the
//! lines' timestamps grouped by structured-metadata set, with running line bytes, each
//! distinct set stored once — and counting lines and line bytes per time span and set
//! from it. It does not own which spans a query needs (query-lang's window edges), nor
//! caching decoded columns (storage).
//!
//! Decoding checks each distinct metadata encoding once (UTF-8, structure) instead of
//! building strings per line: a line whose metadata bytes start with a set already seen
//! has that set (the encoding is self-delimiting), so most lines cost two varints and
//! one short byte compare. Counting a span of one set is then two binary searches: its
//! lines are the index difference, its bytes the difference of the running bytes, so a
//! count that finds the columns cached costs per span and set, not per line.
//!
//! ```text
//! set 0's lines          set 1's lines      ...
//! timestamps    [t0 t3 t4 t7 ...        | t1 t2 t5 ...  | ...]   ascending per set
//! bytes_before  [0  b0 .. running sum of line lengths in this order ......... total]
//! starts        [0,                       s1,             s2, ..., lines]
//! ```

use std::collections::HashMap;

use lode_push::Entry;

use super::{
    columns_error, decompress_exact, read_block_header, read_metadata, read_ts_and_lengths,
    split_columns, take_varint, with_scratch, BlockMeta, Error, BLOCK_VERSION_ROWS,
    MAX_BLOCK_UNCOMPRESSED, MAX_TYPICAL_BLOCK,
};

/// A block's lines as counts see them (see the module docs for the layout).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CountColumns {
    /// Every line's timestamp, set by set (in set order), ascending within a set.
    timestamps: Vec<i64>,
    /// Line bytes of the lines before each position of `timestamps`, and the total last.
    /// A block holds at most [`MAX_BLOCK_UNCOMPRESSED`] bytes, so the sums fit.
    bytes_before: Vec<u32>,
    /// Where each set's lines start in `timestamps`, and the line count last.
    starts: Vec<u32>,
    /// The distinct sets, in the order of their first line.
    sets: Vec<Vec<(String, String)>>,
}

impl CountColumns {
    /// Groups lines (given in time order) by set: `ids[i]` is line `i`'s index in `sets`.
    fn build(
        timestamps: Vec<i64>,
        lengths: &[u32],
        ids: &[u32],
        sets: Vec<Vec<(String, String)>>,
    ) -> Result<CountColumns, Error> {
        let n = timestamps.len();
        let total: u64 = lengths.iter().map(|&l| u64::from(l)).sum();
        if total > MAX_BLOCK_UNCOMPRESSED as u64 || n != lengths.len() || n != ids.len() {
            return Err(columns_error("line lengths beyond a block's size"));
        }
        let running = |lengths: &mut dyn Iterator<Item = u32>| {
            let mut out = Vec::with_capacity(n + 1);
            let mut sum = 0u32;
            out.push(0);
            for l in lengths {
                // Cannot wrap: the total was checked above.
                sum = sum.wrapping_add(l);
                out.push(sum);
            }
            out
        };
        if sets.len() <= 1 {
            return Ok(CountColumns {
                bytes_before: running(&mut lengths.iter().copied()),
                starts: vec![0, n as u32],
                timestamps,
                sets,
            });
        }
        // A stable counting sort of the lines by set.
        let mut starts = vec![0u32; sets.len() + 1];
        for &id in ids {
            let slot = starts
                .get_mut(id as usize + 1)
                .ok_or_else(|| columns_error("metadata set id out of range"))?;
            *slot += 1;
        }
        for i in 1..starts.len() {
            let before = starts.get(i - 1).copied().unwrap_or(0);
            if let Some(s) = starts.get_mut(i) {
                *s += before;
            }
        }
        let mut next: Vec<u32> = starts.clone();
        let mut grouped_ts = vec![0i64; n];
        let mut grouped_len = vec![0u32; n];
        for ((&id, &ts), &len) in ids.iter().zip(&timestamps).zip(lengths) {
            if let Some(at) = next.get_mut(id as usize) {
                if let Some(t) = grouped_ts.get_mut(*at as usize) {
                    *t = ts;
                }
                if let Some(l) = grouped_len.get_mut(*at as usize) {
                    *l = len;
                }
                *at += 1;
            }
        }
        Ok(CountColumns {
            bytes_before: running(&mut grouped_len.into_iter()),
            timestamps: grouped_ts,
            starts,
            sets,
        })
    }

    /// The distinct structured-metadata sets, indexed by the ids
    /// [`CountColumns::count_spans`] reports.
    pub fn sets(&self) -> &[Vec<(String, String)>] {
        &self.sets
    }

    /// Lines of the block.
    pub fn len(&self) -> usize {
        self.timestamps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timestamps.is_empty()
    }

    /// Memory held, for cache budgets.
    pub fn heap_bytes(&self) -> usize {
        self.timestamps.capacity() * 8
            + self.bytes_before.capacity() * 4
            + self.starts.capacity() * 4
            + self
                .sets
                .iter()
                .map(|s| 24 + s.iter().map(|(n, v)| 48 + n.len() + v.len()).sum::<usize>())
                .sum::<usize>()
    }

    /// The count columns of decoded entries (sorted by timestamp), e.g. of a block written
    /// before columns existed.
    pub fn from_entries(entries: &[Entry]) -> Result<CountColumns, Error> {
        let mut sets = Vec::new();
        let mut ids = Vec::with_capacity(entries.len());
        let mut known: HashMap<&[(String, String)], u32, foldhash::fast::RandomState> =
            HashMap::default();
        for e in entries {
            let next = known.len() as u32;
            let id = *known
                .entry(e.structured_metadata.as_slice())
                .or_insert_with(|| {
                    sets.push(e.structured_metadata.to_vec());
                    next
                });
            ids.push(id);
        }
        let lengths: Vec<u32> = entries
            .iter()
            .map(|e| u32::try_from(e.line.len()).unwrap_or(u32::MAX))
            .collect();
        CountColumns::build(
            entries.iter().map(|e| e.timestamp_ns).collect(),
            &lengths,
            &ids,
            sets,
        )
    }

    /// Calls `f(upper edge, set id, lines, line bytes)` for the lines of each span
    /// `(edges[i-1], edges[i]]` (`edges` ascending) and each set found there: spans in
    /// ascending order, within a span by set id. Lines outside `(first edge, last edge]`
    /// count nowhere.
    pub fn count_spans(&self, edges: &[i64], mut f: impl FnMut(i64, usize, u64, u64)) {
        let (Some(&first), Some(&last)) = (edges.first(), edges.last()) else {
            return;
        };
        let mut found: Vec<(i64, usize, u64, u64)> = Vec::new();
        for (set, bounds) in self.starts.windows(2).enumerate() {
            let (a, b) = match *bounds {
                [a, b] => (a as usize, b as usize),
                _ => continue,
            };
            let ts = self.timestamps.get(a..b).unwrap_or_default();
            let mut at = ts.partition_point(|&t| t <= first);
            let end = ts.partition_point(|&t| t <= last);
            while at < end {
                let Some(&t) = ts.get(at) else { break };
                let Some(&upper) = edges.get(edges.partition_point(|&e| e < t)) else {
                    break;
                };
                let to = at
                    + ts.get(at..end)
                        .unwrap_or_default()
                        .partition_point(|&x| x <= upper);
                // `to > at`: ts[at] <= upper by the choice of span.
                let to = to.max(at + 1);
                let bytes = |i: usize| self.bytes_before.get(a + i).copied().unwrap_or(0);
                let sum = bytes(to).wrapping_sub(bytes(at));
                found.push((upper, set, (to - at) as u64, u64::from(sum)));
                at = to;
            }
        }
        // Set by set above; spans in order for the engine (a series fed in time order
        // needs no sort), sets in id order within a span.
        found.sort_by_key(|&(upper, set, _, _)| (upper, set));
        for (upper, set, lines, bytes) in found {
            f(upper, set, lines, bytes);
        }
    }
}

/// Verifies a block and decodes what counting its lines needs: from a v2 block only its
/// columns frame, a v1 block (one frame for everything) decoded whole.
pub fn read_count_columns(bytes: &[u8]) -> Result<(BlockMeta, CountColumns), Error> {
    let h = read_block_header(bytes)?;
    if h.version == BLOCK_VERSION_ROWS {
        let (meta, entries) = super::decode_block(bytes)?;
        return Ok((meta, CountColumns::from_entries(&entries)?));
    }
    let (columns_z, columns_len, _) = split_columns(&h)?;
    with_scratch(|dctx, first, _| {
        decompress_exact(dctx, columns_z, first, columns_len, "columns")?;
        let decoded = decode_columns(&h.meta, first);
        // A rare huge block must not pin its buffer in every thread for good.
        if first.capacity() > 4 * MAX_TYPICAL_BLOCK {
            *first = Vec::new();
        }
        decoded.map(|c| (h.meta, c))
    })
}

/// Encoded metadata sets tried byte for byte, in order, before a line's metadata is
/// parsed: blocks rarely hold more.
const MATCHED_SETS: usize = 32;

/// Decodes a v2 block's decompressed columns frame.
fn decode_columns(meta: &BlockMeta, columns: &[u8]) -> Result<CountColumns, Error> {
    let (timestamps, lengths, mut rest) = read_ts_and_lengths(meta, columns)?;
    let mut ids: Vec<u32> = Vec::with_capacity(timestamps.len());
    let mut sets: Vec<Vec<(String, String)>> = Vec::new();
    // The first sets' encodings: a line whose metadata bytes start with one of them has
    // exactly that set (the encoding is self-delimiting), so it needs no parse. Past
    // those, sets are found by encoded bytes. Two encodings of one set (a non-minimal
    // varint from some other writer) get two ids: their counts are reported apart and
    // summed by the engine.
    let mut matched: Vec<&[u8]> = Vec::new();
    let mut known: HashMap<&[u8], u32, foldhash::fast::RandomState> = HashMap::default();
    let mut previous = 0usize;
    let mut decoded: Vec<(&str, &str)> = Vec::new();
    for _ in 0..timestamps.len() {
        // The previous line's set first, then the others in order.
        let hit = match matched.get(previous) {
            Some(p) if starts_with(rest, p) => Some(previous),
            _ => matched.iter().position(|p| starts_with(rest, p)),
        };
        if let Some(i) = hit {
            let len = matched.get(i).map_or(0, |p| p.len());
            rest = rest.get(len..).unwrap_or_default();
            previous = i;
            // The first sets are numbered in the order they were matched.
            ids.push(i as u32);
            continue;
        }
        let raw = take_metadata(&mut rest)?;
        let id = match known.get(raw) {
            Some(&id) => id,
            None => {
                // A new encoding: checked (UTF-8, structure) and kept once.
                let mut check = raw;
                read_metadata(&mut check, &mut decoded)?;
                let id = u32::try_from(sets.len())
                    .map_err(|_| columns_error("too many metadata sets"))?;
                sets.push(
                    decoded
                        .iter()
                        .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                        .collect(),
                );
                known.insert(raw, id);
                if matched.len() < MATCHED_SETS {
                    matched.push(raw);
                    previous = matched.len() - 1;
                }
                id
            }
        };
        ids.push(id);
    }
    if !rest.is_empty() {
        return Err(columns_error("trailing bytes"));
    }
    CountColumns::build(timestamps, &lengths, &ids, sets)
}

/// Whether `bytes` starts with `prefix` (a short metadata encoding): compared eight bytes
/// at a time (the last eight overlapping the others), without a call into `memcmp`.
#[inline(always)]
fn starts_with(bytes: &[u8], prefix: &[u8]) -> bool {
    let Some(head) = bytes.get(..prefix.len()) else {
        return false;
    };
    let word = |b: &[u8], at: usize| {
        b.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map(u64::from_ne_bytes)
    };
    let n = prefix.len();
    if n < 8 {
        return head.iter().zip(prefix).all(|(x, y)| x == y);
    }
    let mut at = 0;
    while at + 8 < n {
        if word(head, at) != word(prefix, at) {
            return false;
        }
        at += 8;
    }
    word(head, n - 8) == word(prefix, n - 8)
}

/// Takes one line's encoded structured metadata (count, then length-prefixed names and
/// values) off the front of `rest`, unchecked beyond its framing.
fn take_metadata<'a>(rest: &mut &'a [u8]) -> Result<&'a [u8], Error> {
    let start: &'a [u8] = rest;
    let n = take_varint(rest).ok_or_else(|| columns_error("bad metadata count"))?;
    if n > (rest.len() / 2) as u64 {
        return Err(columns_error("metadata count larger than the columns"));
    }
    for _ in 0..n * 2 {
        let len = take_varint(rest).ok_or_else(|| columns_error("bad metadata length"))?;
        let len = usize::try_from(len).map_err(|_| columns_error("bad metadata length"))?;
        *rest = rest
            .get(len..)
            .ok_or_else(|| columns_error("metadata overruns the columns"))?;
    }
    let used = start.len() - rest.len();
    Ok(start.get(..used).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk::tests::seal_v1;
    use crate::chunk::SealedBlock;
    use proptest::prelude::*;

    fn entry(ts: i64, line: &str, md: &[(&str, &str)]) -> Entry {
        Entry {
            timestamp_ns: ts,
            line: line.to_string(),
            structured_metadata: md
                .iter()
                .map(|(n, v)| ((*n).to_string(), (*v).to_string()))
                .collect(),
        }
    }

    /// One span's count of one set: `(upper edge, set, lines, bytes)`.
    type SpanCount = (i64, Vec<(String, String)>, u64, u64);

    /// Every span's counts.
    fn spans(c: &CountColumns, edges: &[i64]) -> Vec<SpanCount> {
        let mut out = Vec::new();
        c.count_spans(edges, |upper, set, lines, bytes| {
            out.push((upper, c.sets()[set].clone(), lines, bytes));
        });
        out
    }

    /// What counting the decoded entries one by one gives, in the documented order.
    fn spans_of_entries(entries: &[Entry], edges: &[i64]) -> Vec<SpanCount> {
        let mut out: Vec<SpanCount> = Vec::new();
        let (first, last) = (edges[0], edges[edges.len() - 1]);
        let mut span_from = 0;
        let mut span_upper = None;
        for e in entries {
            if e.timestamp_ns <= first || e.timestamp_ns > last {
                continue;
            }
            let upper = *edges.iter().find(|&&x| x >= e.timestamp_ns).unwrap();
            if span_upper != Some(upper) {
                span_upper = Some(upper);
                span_from = out.len();
            }
            match out[span_from..]
                .iter_mut()
                .find(|c| e.structured_metadata == c.1)
            {
                Some(c) => {
                    c.2 += 1;
                    c.3 += e.line.len() as u64;
                }
                None => out.push((
                    upper,
                    e.structured_metadata.to_vec(),
                    1,
                    e.line.len() as u64,
                )),
            }
        }
        // Within a span, sets in the order of their first line in the block.
        let first_seen = |md: &Vec<(String, String)>| {
            entries
                .iter()
                .position(|e| &e.structured_metadata == md)
                .unwrap()
        };
        out.sort_by_key(|c| (c.0, first_seen(&c.1)));
        out
    }

    #[test]
    fn the_columns_alone_give_every_line_but_its_text() {
        let entries = vec![
            entry(5, "hello", &[]),
            entry(9, "hi", &[("level", "warn")]),
            entry(12, "hey", &[]),
        ];
        let b = SealedBlock::seal(entries.clone(), 1).unwrap();
        let (meta, c) = read_count_columns(&b.bytes).unwrap();
        assert_eq!(meta, b.meta);
        assert_eq!(c.len(), 3);
        assert_eq!(c.sets().len(), 2, "the empty set is stored once");
        assert_eq!(
            spans(&c, &[0, 10, 20]),
            [
                (10, vec![], 1, 5),
                (10, vec![("level".into(), "warn".into())], 1, 2),
                (20, vec![], 1, 3)
            ]
        );
        let (_, v1) = read_count_columns(&seal_v1(&entries)).unwrap();
        assert_eq!(v1, c, "a v1 block gives the same columns");
    }

    #[test]
    fn lines_on_an_edge_count_in_the_span_it_closes_and_none_outside() {
        let entries: Vec<Entry> = (1..=10).map(|t| entry(t, "x", &[])).collect();
        let c = CountColumns::from_entries(&entries).unwrap();
        // (2, 5] and (5, 8]: 3, 4, 5 and 6, 7, 8.
        assert_eq!(
            spans(&c, &[2, 5, 8]),
            [(5, vec![], 3, 3), (8, vec![], 3, 3)]
        );
        assert!(spans(&c, &[10, 20]).is_empty());
        assert!(spans(&c, &[7]).is_empty(), "one edge makes no span");
    }

    #[test]
    fn blocks_with_a_set_per_line_count_the_same() {
        let entries: Vec<Entry> = (0..600)
            .map(|i| entry(i, "ab", &[("trace", &(i % 300).to_string())]))
            .collect();
        let b = SealedBlock::seal(entries.clone(), 1).unwrap();
        let (_, c) = read_count_columns(&b.bytes).unwrap();
        assert_eq!(c.sets().len(), 300);
        let edges = [-1, 299, 599];
        assert_eq!(spans(&c, &edges), spans_of_entries(&entries, &edges));
    }

    #[test]
    fn metadata_that_is_not_utf8_or_followed_by_stray_bytes_is_refused() {
        let b = SealedBlock::seal(vec![entry(1, "x", &[("level", "warn")])], 1).unwrap();
        let (meta, _) = read_count_columns(&b.bytes).unwrap();
        // ts (delta 0), line length 1, one pair: 5 "level" 4 <value>.
        let columns = |value: &[u8]| {
            let mut c = vec![0, 1, 1, 5];
            c.extend_from_slice(b"level");
            c.push(4);
            c.extend_from_slice(value);
            c
        };
        assert!(decode_columns(&meta, &columns(b"warn")).is_ok());
        assert!(decode_columns(&meta, &columns(b"w\xffrn")).is_err());
        let mut trailing = columns(b"warn");
        trailing.push(0);
        assert!(decode_columns(&meta, &trailing).is_err());
        let mut short = columns(b"warn");
        short.pop();
        assert!(decode_columns(&meta, &short).is_err());
    }

    fn arb_entries() -> impl Strategy<Value = Vec<Entry>> {
        proptest::collection::vec(
            (
                0i64..200,
                "[a-z]{0,12}",
                proptest::collection::vec(("[ab]", "[xyé]{0,2}"), 0..3),
            ),
            0..120,
        )
        .prop_map(|v| {
            v.into_iter()
                .map(|(timestamp_ns, line, structured_metadata)| Entry {
                    timestamp_ns,
                    line,
                    structured_metadata: structured_metadata.into(),
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn the_word_compare_agrees_with_slice_starts_with(
            bytes in proptest::collection::vec(0u8..3, 0..40),
            prefix in proptest::collection::vec(0u8..3, 0..40),
            share in 0usize..40,
        ) {
            prop_assert_eq!(starts_with(&bytes, &prefix), bytes.starts_with(&prefix));
            // Mostly-equal inputs, where only the last words can differ.
            let own = &bytes[..share.min(bytes.len())];
            prop_assert!(starts_with(&bytes, own));
        }

        #[test]
        fn counting_the_columns_equals_counting_the_decoded_entries(
            entries in arb_entries(),
            mut edges in proptest::collection::vec(-10i64..220, 0..12),
        ) {
            edges.sort_unstable();
            edges.dedup();
            let b = SealedBlock::seal(entries, 1).unwrap();
            let decoded = b.entries().unwrap();
            let (_, c) = read_count_columns(&b.bytes).unwrap();
            prop_assert_eq!(c.len(), decoded.len());
            if edges.len() >= 2 {
                prop_assert_eq!(spans(&c, &edges), spans_of_entries(&decoded, &edges));
            } else {
                prop_assert!(spans(&c, &edges).is_empty());
            }
        }
    }
}
