//! Retention passes against segments written by a real ingester, with a manual clock.

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::config::units::ConfigDuration;
use crate::ingester::Ingester;
use crate::limits::StreamRetention;
use lode_push::Entry;

/// 2026-01-01T12:00:00Z.
const T0: i64 = 1_767_268_800_000_000_000;
const HOUR: i64 = 3_600_000_000_000;

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).unwrap()
}

use crate::testutil::app_labels as labels;

struct Fixture {
    dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    storage: Arc<Storage>,
    ingester: Arc<Ingester>,
}

impl Fixture {
    async fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let (storage, ingester) = crate::testutil::open_store(dir.path(), clock.clone()).await;
        Fixture {
            dir,
            clock,
            storage,
            ingester,
        }
    }

    /// Pushes one entry per stream at `ts` and flushes it into a segment.
    async fn write(&self, t: &TenantId, apps: &[&str], ts: i64) {
        let streams = apps
            .iter()
            .map(|a| {
                let e = Entry {
                    timestamp_ns: ts,
                    line: format!("{a} line"),
                    structured_metadata: Default::default(),
                };
                (labels(a), vec![e])
            })
            .collect();
        self.ingester.push(t, streams).await.unwrap();
        self.ingester.flush_all().await.unwrap();
    }

    fn object_count(&self) -> usize {
        crate::testutil::count_files(&self.dir.path().join("chunks"))
    }
}

fn limits(period_h: u64) -> LimitsConfig {
    LimitsConfig {
        retention_period: ConfigDuration::from_hours(period_h),
        ..LimitsConfig::default()
    }
}

#[test]
fn cutoff_is_now_minus_the_tenant_period_and_zero_keeps_forever() {
    let mut overrides = HashMap::new();
    overrides.insert(tenant("short"), limits(24));
    overrides.insert(tenant("forever"), limits(0));
    let l = Limits::with_overrides(LimitsConfig::default(), overrides);
    assert_eq!(cutoff_ns(&l, &tenant("other"), T0), T0 - 744 * HOUR);
    assert_eq!(cutoff_ns(&l, &tenant("short"), T0), T0 - 24 * HOUR);
    assert_eq!(cutoff_ns(&l, &tenant("forever"), T0), i64::MIN);
}

#[tokio::test]
async fn segments_past_retention_are_deleted_and_forgotten_per_tenant_period() {
    let f = Fixture::new().await;
    let mut overrides = HashMap::new();
    overrides.insert(tenant("short"), limits(24));
    let l = Arc::new(Limits::with_overrides(LimitsConfig::default(), overrides));
    let r = Retention::new(CompactorConfig::default(), f.storage.clone(), l).unwrap();
    f.write(&tenant("short"), &["api"], T0).await;
    f.write(&tenant("long"), &["api"], T0).await;
    assert_eq!(f.object_count(), 2);

    // 23h later nothing is old enough.
    let stats = r.run_once(T0 + 23 * HOUR).await.unwrap();
    assert_eq!(stats, PassStats::default());

    f.clock.set(T0 + 25 * HOUR);
    let stats = r.run_once(f.clock.now_ns()).await.unwrap();
    assert_eq!(stats.deleted_segments, 1);
    assert!(stats.deleted_bytes > 0);
    assert!(f.storage.segments(&tenant("short")).is_empty());
    assert!(f
        .storage
        .index()
        .streams(&tenant("short"), &[], 0, i64::MAX)
        .is_empty());
    assert_eq!(f.storage.segments(&tenant("long")).len(), 1);
    assert_eq!(f.object_count(), 1);
    assert!(r.cutoff_ns(&tenant("short"), f.clock.now_ns()) > T0);
    assert!(r.cutoff_ns(&tenant("long"), f.clock.now_ns()) < T0);

    // The default 744h catches up with the other tenant.
    let stats = r.run_once(T0 + 745 * HOUR).await.unwrap();
    assert_eq!(stats.deleted_segments, 1);
    assert_eq!(f.object_count(), 0);
}

#[tokio::test]
async fn a_stream_rule_rewrites_a_segment_without_the_expired_stream() {
    let f = Fixture::new().await;
    let mut cfg = limits(744);
    cfg.retention_stream = vec![StreamRetention {
        selector: r#"{app="debug"}"#.into(),
        priority: 1,
        period: ConfigDuration::from_hours(24),
    }];
    let l = Arc::new(Limits::new(cfg));
    let r = Retention::new(CompactorConfig::default(), f.storage.clone(), l).unwrap();
    f.write(&tenant("a"), &["api", "debug"], T0).await;
    let now = T0 + 25 * HOUR;
    assert!(r.stream_cutoff_ns(&tenant("a"), &labels("debug"), now) > T0);
    assert!(r.stream_cutoff_ns(&tenant("a"), &labels("api"), now) < T0);

    let stats = r.run_once(now).await.unwrap();
    assert_eq!(stats.rewritten_segments, 1);
    let segs = f.storage.segments(&tenant("a"));
    assert_eq!(segs.len(), 1);
    let streams: Vec<_> = segs[0].footer.streams.iter().map(|s| &s.labels).collect();
    assert_eq!(streams, [&labels("api")]);
    let info = &segs[0].footer.streams[0].chunks[0];
    let entries = f
        .storage
        .read_block(&segs[0], &info.blocks[0])
        .await
        .unwrap();
    assert_eq!(entries[0].line, "api line");
    assert_eq!(f.object_count(), 1);

    // A reopened store sees the same thing.
    let cfg = crate::testutil::store_config(f.dir.path(), crate::storage::DEFAULT_SAMPLE_CACHE_MB);
    let reopened = Storage::open(&cfg, f.clock.clone()).await.unwrap();
    let series = reopened
        .index()
        .series(&tenant("a"), &[vec![]], 0, i64::MAX);
    assert_eq!(series, vec![labels("api")]);
}

#[tokio::test]
async fn nothing_is_deleted_when_retention_is_disabled() {
    let f = Fixture::new().await;
    let cfg = CompactorConfig {
        retention_enabled: false,
        ..CompactorConfig::default()
    };
    let r = Retention::new(cfg, f.storage.clone(), Arc::new(Limits::new(limits(1)))).unwrap();
    f.write(&tenant("a"), &["api"], T0).await;
    let stats = r.run_once(T0 + 1000 * HOUR).await.unwrap();
    assert_eq!(stats, PassStats::default());
    assert_eq!(f.object_count(), 1);
    assert_eq!(r.cutoff_ns(&tenant("a"), T0 + 1000 * HOUR), i64::MIN);
}

/// A stored block holding entries on both sides of the retention cut-off: every read
/// returns only the newer one, whether it counts the block, runs a pipeline over it or
/// lists its lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_drop_the_expired_part_of_a_block_straddling_the_cut_off() {
    use crate::limits::Limits;
    use crate::querier::Querier;
    use query_lang::eval::{QueryParams, QueryResult};

    let f = Fixture::new().await;
    let t = tenant("fake");
    let minute = HOUR / 60;
    let entries = [T0, T0 + 10 * minute]
        .into_iter()
        .map(|ts| Entry {
            timestamp_ns: ts,
            line: format!("level=info at={ts}"),
            structured_metadata: Default::default(),
        })
        .collect();
    f.ingester
        .push(&t, vec![(labels("a"), entries)])
        .await
        .unwrap();
    f.ingester.flush_all().await.unwrap();
    // Retention 1h: the cut-off falls between the two entries of the one block.
    f.clock.set(T0 + HOUR + 5 * minute);
    let now = f.clock.now_ns();
    let querier = Querier::new(
        f.storage.clone(),
        f.ingester.clone(),
        Arc::new(Limits::new(limits(1))),
    );
    for q in [
        r#"count_over_time({app="a"}[3h])"#,
        r#"count_over_time({app="a"} | logfmt [3h])"#,
    ] {
        let expr = query_lang::parse_expr(q).unwrap();
        let (result, _) = querier
            .query(&t, expr, QueryParams::instant(now))
            .await
            .unwrap();
        let QueryResult::Vector(v) = result else {
            panic!("{q}: not a vector: {result:?}");
        };
        assert_eq!(v.iter().map(|s| s.value).collect::<Vec<_>>(), [1.0], "{q}");
    }
    let expr = query_lang::parse_expr(r#"{app="a"}"#).unwrap();
    let (result, _) = querier
        .query(&t, expr, QueryParams::range(T0 - HOUR, now, 0))
        .await
        .unwrap();
    let QueryResult::Streams { streams, .. } = result else {
        panic!("not streams: {result:?}");
    };
    let lines: Vec<usize> = streams.iter().map(|s| s.entries.len()).collect();
    assert_eq!(lines, [1]);
}
