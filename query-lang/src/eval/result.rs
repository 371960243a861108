//! Query results and their Loki JSON form.
//!
//! Owns the result types the engine returns (`streams`, `matrix`, `vector`, `scalar`) and
//! a serde `Serialize` that writes exactly the `data` object of Loki's query responses:
//! `{"resultType": ..., ["encodingFlags": [...],] "result": ...}`, with `"stream"`
//! before `"values"`, nanosecond timestamps as strings for log lines, float seconds for
//! samples, and sample values as Go prints them (`NaN`, `+Inf`, `-Inf`). The HTTP layer
//! wraps it in `{"status": "success", "data": ...}` without reshaping anything.

use serde::ser::{SerializeMap, SerializeSeq, SerializeTuple};
use serde::{Serialize, Serializer};

use crate::log::Labels;

/// The per-entry labels of the `categorize-labels` encoding.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EntryLabels {
    pub structured_metadata: Labels,
    pub parsed: Labels,
}

/// One returned log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEntry {
    pub timestamp_ns: i64,
    pub line: String,
    /// Set only when the query asked for categorized labels.
    pub categorized: Option<EntryLabels>,
}

/// Lines sharing one label set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    pub labels: Labels,
    pub entries: Vec<LogEntry>,
}

/// One point of a range result.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    pub timestamp_ms: i64,
    pub value: f64,
}

/// A range-query series.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub points: Vec<Point>,
}

/// An instant-query sample.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: Labels,
    pub timestamp_ms: i64,
    pub value: f64,
}

/// What a query returns.
#[derive(Clone, Debug, PartialEq)]
pub enum QueryResult {
    /// Log lines grouped into streams; `categorized` marks the `categorize-labels`
    /// encoding (stream labels as the key, metadata and parsed labels per entry).
    Streams {
        streams: Vec<Stream>,
        categorized: bool,
    },
    Matrix(Vec<Series>),
    Vector(Vec<Sample>),
    Scalar {
        timestamp_ms: i64,
        value: f64,
    },
}

impl QueryResult {
    /// Loki's `resultType`.
    pub fn result_type(&self) -> &'static str {
        match self {
            QueryResult::Streams { .. } => "streams",
            QueryResult::Matrix(_) => "matrix",
            QueryResult::Vector(_) => "vector",
            QueryResult::Scalar { .. } => "scalar",
        }
    }

    /// Number of series or streams (1 for a scalar).
    pub fn len(&self) -> usize {
        match self {
            QueryResult::Streams { streams, .. } => streams.len(),
            QueryResult::Matrix(m) => m.len(),
            QueryResult::Vector(v) => v.len(),
            QueryResult::Scalar { .. } => 1,
        }
    }

    /// True when there is nothing to return.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`, which Loki uses for sample values.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        format!("{v}")
    }
}

struct LabelMap<'a>(&'a Labels);

impl Serialize for LabelMap<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

/// Seconds as Loki writes them: an integer when whole, else up to millisecond decimals.
struct Seconds(i64);

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.0 % 1000 == 0 {
            s.serialize_i64(self.0 / 1000)
        } else {
            s.serialize_f64(self.0 as f64 / 1000.0)
        }
    }
}

struct SamplePair(i64, f64);

impl Serialize for SamplePair {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(&Seconds(self.0))?;
        t.serialize_element(&format_value(self.1))?;
        t.end()
    }
}

struct EntryJson<'a>(&'a LogEntry);

impl Serialize for EntryJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let n = if e.categorized.is_some() { 3 } else { 2 };
        let mut t = s.serialize_tuple(n)?;
        t.serialize_element(&e.timestamp_ns.to_string())?;
        t.serialize_element(&e.line)?;
        if let Some(c) = &e.categorized {
            t.serialize_element(&CategoriesJson(c))?;
        }
        t.end()
    }
}

struct CategoriesJson<'a>(&'a EntryLabels);

impl Serialize for CategoriesJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let c = self.0;
        let mut m = s.serialize_map(None)?;
        if !c.structured_metadata.is_empty() {
            m.serialize_entry("structuredMetadata", &LabelMap(&c.structured_metadata))?;
        }
        if !c.parsed.is_empty() {
            m.serialize_entry("parsed", &LabelMap(&c.parsed))?;
        }
        m.end()
    }
}

struct StreamJson<'a>(&'a Stream);

impl Serialize for StreamJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        // Grafana reads "stream" before "values".
        m.serialize_entry("stream", &LabelMap(&self.0.labels))?;
        m.serialize_entry("values", &Values(&self.0.entries))?;
        m.end()
    }
}

struct Values<'a>(&'a [LogEntry]);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for e in self.0 {
            seq.serialize_element(&EntryJson(e))?;
        }
        seq.end()
    }
}

struct SeriesJson<'a>(&'a Series);

impl Serialize for SeriesJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("metric", &LabelMap(&self.0.labels))?;
        m.serialize_entry("values", &Points(&self.0.points))?;
        m.end()
    }
}

struct Points<'a>(&'a [Point]);

impl Serialize for Points<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for p in self.0 {
            seq.serialize_element(&SamplePair(p.timestamp_ms, p.value))?;
        }
        seq.end()
    }
}

struct SampleJson<'a>(&'a Sample);

impl Serialize for SampleJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(2))?;
        m.serialize_entry("metric", &LabelMap(&self.0.labels))?;
        m.serialize_entry("value", &SamplePair(self.0.timestamp_ms, self.0.value))?;
        m.end()
    }
}

struct ResultJson<'a>(&'a QueryResult);

impl Serialize for ResultJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            QueryResult::Streams { streams, .. } => {
                let mut seq = s.serialize_seq(Some(streams.len()))?;
                for st in streams {
                    seq.serialize_element(&StreamJson(st))?;
                }
                seq.end()
            }
            QueryResult::Matrix(m) => {
                let mut seq = s.serialize_seq(Some(m.len()))?;
                for series in m {
                    seq.serialize_element(&SeriesJson(series))?;
                }
                seq.end()
            }
            QueryResult::Vector(v) => {
                let mut seq = s.serialize_seq(Some(v.len()))?;
                for sample in v {
                    seq.serialize_element(&SampleJson(sample))?;
                }
                seq.end()
            }
            QueryResult::Scalar {
                timestamp_ms,
                value,
            } => {
                // Loki 3.7 stamps instant scalars with the query time in milliseconds
                // multiplied as if it were seconds-to-nanoseconds (wrapping on overflow)
                // and then divided to seconds; Grafana ignores the stamp, but we print
                // what Loki prints so clients comparing answers see no difference.
                let loki_stamp = timestamp_ms.wrapping_mul(1_000_000_000) / 1_000_000;
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(&loki_stamp)?;
                t.serialize_element(&format_value(*value))?;
                t.end()
            }
        }
    }
}

impl Serialize for QueryResult {
    /// Writes Loki's `data` object.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let categorized = matches!(
            self,
            QueryResult::Streams {
                categorized: true,
                ..
            }
        );
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("resultType", self.result_type())?;
        if categorized {
            m.serialize_entry("encodingFlags", &["categorize-labels"])?;
        }
        m.serialize_entry("result", &ResultJson(self))?;
        m.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(p: &[(&str, &str)]) -> Labels {
        p.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn streams_serialize_stream_before_values_with_string_timestamps() {
        let r = QueryResult::Streams {
            streams: vec![Stream {
                labels: l(&[("app", "x")]),
                entries: vec![LogEntry {
                    timestamp_ns: 1_767_225_600_000_000_001,
                    line: "hi".to_owned(),
                    categorized: None,
                }],
            }],
            categorized: false,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"resultType":"streams","result":[{"stream":{"app":"x"},"values":[["1767225600000000001","hi"]]}]}"#
        );
    }

    #[test]
    fn categorized_streams_carry_flags_and_per_entry_label_groups() {
        let r = QueryResult::Streams {
            streams: vec![Stream {
                labels: l(&[("app", "x")]),
                entries: vec![LogEntry {
                    timestamp_ns: 5,
                    line: "l".to_owned(),
                    categorized: Some(EntryLabels {
                        structured_metadata: Default::default(),
                        parsed: l(&[("level", "info")]),
                    }),
                }],
            }],
            categorized: true,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"resultType":"streams","encodingFlags":["categorize-labels"],"result":[{"stream":{"app":"x"},"values":[["5","l",{"parsed":{"level":"info"}}]]}]}"#
        );
    }

    #[test]
    fn sample_values_print_like_go_and_whole_seconds_as_integers() {
        let r = QueryResult::Matrix(vec![Series {
            labels: vec![],
            points: vec![
                Point {
                    timestamp_ms: 1_767_225_660_000,
                    value: 0.1,
                },
                Point {
                    timestamp_ms: 1_767_225_660_500,
                    value: f64::NAN,
                },
                Point {
                    timestamp_ms: 0,
                    value: f64::NEG_INFINITY,
                },
            ],
        }]);
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"resultType":"matrix","result":[{"metric":{},"values":[[1767225660,"0.1"],[1767225660.5,"NaN"],[0,"-Inf"]]}]}"#
        );
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(1e21), "1000000000000000000000");
    }

    #[test]
    fn instant_scalar_is_stamped_as_loki_stamps_it() {
        let r = QueryResult::Scalar {
            timestamp_ms: 1_767_229_200_000,
            value: 7.0,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"resultType":"scalar","result":[-3658231076116,"7"]}"#
        );
    }
}
