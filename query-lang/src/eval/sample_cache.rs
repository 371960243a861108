//! The sample cache: what a range aggregation's pipeline made of one stored block.
//!
//! Owns remembering, per immutable block (a [`BlockOrigin`] a source puts on a batch that
//! is a whole block) and per *extraction* (everything that decides a line's sample and
//! series: the range aggregation with its pipeline and unwrap, the grouping its series
//! are keyed by, the parser hints, whether errors are kept), the samples that block gave:
//! for each series, the timestamps and values, all of them, whatever the query's time
//! range (a later query over another range reuses them and drops what lies outside its
//! own). Dashboards re-run the same metric queries over a sliding window; every block
//! but the newest then costs a lookup instead of decompressing and parsing its lines.
//!
//! It does not own deciding when a batch is a whole block (the source does, and an
//! origin must name content that never changes), nor evaluation (`super::range`). Blocks
//! whose lines raised an error the query would report are never cached, so an error is
//! always raised by reading the lines. Bounded in bytes; least recently used out first.

use std::sync::{Arc, Mutex};

use crate::log::Labels;

/// An immutable block of stored entries: a batch carrying it holds exactly the block's
/// entries (or those of them that can pass the query's leading line filters).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BlockOrigin {
    /// The object holding the block, unique for the content it was written with.
    pub object: u128,
    /// Where the block sits in it.
    pub offset: u64,
}

/// The samples of one series a block gave, in the block's time order.
#[derive(Debug)]
pub(crate) struct CachedSeries {
    pub labels: Labels,
    pub ts: Vec<i64>,
    /// `None`: every value is 1 (a line count).
    pub values: Option<Vec<f64>>,
}

/// One block's samples under one extraction.
#[derive(Debug)]
pub(crate) struct BlockSamples {
    /// The extraction they were made with; compared on every hit, so two extractions
    /// whose hashes collide never share samples.
    extraction: Arc<str>,
    pub series: Vec<CachedSeries>,
}

impl BlockSamples {
    pub(crate) fn new(extraction: Arc<str>, series: Vec<CachedSeries>) -> Self {
        BlockSamples { extraction, series }
    }

    /// Bytes held, roughly: samples, label text and fixed costs.
    fn size(&self) -> usize {
        let series: usize = self
            .series
            .iter()
            .map(|s| {
                let labels: usize = s.labels.iter().map(|(k, v)| k.len() + v.len() + 48).sum();
                let values = s.values.as_ref().map_or(0, |v| v.len() * 8);
                96 + labels + s.ts.len() * 8 + values
            })
            .sum();
        128 + series
    }
}

/// The extraction a range aggregation caches whole blocks' samples under, as a store
/// may look it up (see [`SampleCache::lookup`]): the extraction's text and its hash.
#[derive(Clone, Debug)]
pub struct SampleKey {
    pub(crate) hash: u64,
    pub(crate) extraction: Arc<str>,
}

impl SampleKey {
    pub(crate) fn new(extraction: Arc<str>) -> Self {
        use std::hash::BuildHasher;
        let hash = foldhash::fast::FixedState::with_seed(0x6c6f6465).hash_one(&*extraction);
        SampleKey { hash, extraction }
    }
}

/// The samples one whole block gave under one extraction, found in the cache by a store
/// and handed to the engine instead of the block's entries (see
/// [`super::EntryBatch::cached`]); holding it keeps them alive whatever the cache evicts.
#[derive(Clone, Debug)]
pub struct CachedSamples(pub(crate) Arc<BlockSamples>);

type Key = (BlockOrigin, u64);

struct Inner {
    lru: lru::LruCache<Key, (Arc<BlockSamples>, usize)>,
    bytes: usize,
}

/// Blocks' samples per extraction, least recently used out first once over the budget.
pub struct SampleCache {
    inner: Mutex<Inner>,
    budget: usize,
}

impl std::fmt::Debug for SampleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SampleCache")
            .field("budget", &self.budget)
            .field("bytes", &self.bytes())
            .finish()
    }
}

impl SampleCache {
    /// A cache holding at most `budget` bytes (0: caches nothing).
    pub fn new(budget: usize) -> Self {
        SampleCache {
            inner: Mutex::new(Inner {
                lru: lru::LruCache::unbounded(),
                bytes: 0,
            }),
            budget,
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.bytes)
    }

    /// Blocks (under one extraction each) held now.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.lru.len())
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether anything can be cached at all.
    pub(crate) fn enabled(&self) -> bool {
        self.budget > 0
    }

    pub(crate) fn get(
        &self,
        origin: BlockOrigin,
        hash: u64,
        extraction: &str,
    ) -> Option<Arc<BlockSamples>> {
        let mut inner = self.inner.lock().ok()?;
        let (samples, _) = inner.lru.get(&(origin, hash))?;
        (*samples.extraction == *extraction).then(|| samples.clone())
    }

    /// The samples of the whole block `origin` under `key`, when held: a store may then
    /// hand them to the engine instead of reading the block.
    pub fn lookup(&self, origin: BlockOrigin, key: &SampleKey) -> Option<CachedSamples> {
        self.get(origin, key.hash, &key.extraction)
            .map(CachedSamples)
    }

    pub(crate) fn put(&self, origin: BlockOrigin, hash: u64, samples: Arc<BlockSamples>) {
        let size = samples.size();
        if size > self.budget {
            return;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if let Some((_, old)) = inner.lru.put((origin, hash), (samples, size)) {
            inner.bytes -= old;
        }
        inner.bytes += size;
        while inner.bytes > self.budget {
            match inner.lru.pop_lru() {
                Some((_, (_, s))) => inner.bytes -= s,
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(extraction: &str, n: usize) -> Arc<BlockSamples> {
        Arc::new(BlockSamples::new(
            Arc::from(extraction),
            vec![CachedSeries {
                labels: vec![("app".into(), "api".into())],
                ts: (0..n as i64).collect(),
                values: None,
            }],
        ))
    }

    const AT: BlockOrigin = BlockOrigin {
        object: 7,
        offset: 0,
    };

    #[test]
    fn a_hit_needs_the_same_extraction_not_only_its_hash() {
        let cache = SampleCache::new(1 << 20);
        cache.put(AT, 1, samples("count", 10));
        assert!(cache.get(AT, 1, "count").is_some());
        assert!(cache.get(AT, 1, "bytes").is_none(), "hash collision");
        assert!(cache.get(AT, 2, "count").is_none());
        let other = BlockOrigin { offset: 9, ..AT };
        assert!(cache.get(other, 1, "count").is_none());
    }

    #[test]
    fn the_budget_evicts_least_recently_used_first() {
        let one = samples("count", 1000).size();
        let cache = SampleCache::new(one * 2 + one / 2);
        for offset in 0..3 {
            cache.put(BlockOrigin { offset, ..AT }, 1, samples("count", 1000));
            // Touch the first so the second is the least recently used.
            let _ = cache.get(AT, 1, "count");
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.bytes() <= one * 2 + one / 2);
        assert!(cache.get(AT, 1, "count").is_some());
        assert!(cache
            .get(BlockOrigin { offset: 1, ..AT }, 1, "count")
            .is_none());
        assert!(cache
            .get(BlockOrigin { offset: 2, ..AT }, 1, "count")
            .is_some());
    }

    #[test]
    fn a_zero_budget_caches_nothing() {
        let cache = SampleCache::new(0);
        assert!(!cache.enabled());
        cache.put(AT, 1, samples("count", 1));
        assert!(cache.is_empty());
    }
}
