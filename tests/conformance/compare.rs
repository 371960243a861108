//! Compares a Lode response body with Loki's expected body by the conformance README's
//! rules: `stats` ignored; objects as maps; `streams`/`matrix`/`vector` results as sets
//! of series keyed by label set with values in order; label/series `data` lists as sets.
//! Everything is compared exactly (log lines and nanosecond timestamps as identical
//! strings, sample times of a matrix, vector or scalar as equal numbers, counts equal)
//! except one thing: a sample VALUE of a `matrix`, `vector` or `scalar` result, which
//! matches as a number within a relative 1e-9 (`NaN`, `+Inf`, `-Inf` spelled exactly).

use serde_json::Value;

/// Returns `None` when equal, or a readable description of every difference found.
pub fn diff(expected: &Value, actual: &Value) -> Option<String> {
    let mut out = Vec::new();
    let samples = matches!(
        expected.pointer("/data/resultType").and_then(Value::as_str),
        Some("matrix" | "vector" | "scalar")
    );
    let cx = Cx { samples };
    cx.compare(&strip_stats(expected), &strip_stats(actual), "$", &mut out);
    if out.is_empty() {
        None
    } else {
        Some(out.join("\n"))
    }
}

fn strip_stats(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(data) = v.get_mut("data").and_then(Value::as_object_mut) {
        data.remove("stats");
    }
    v
}

fn series_key(item: &Value) -> String {
    let labels = item
        .get("stream")
        .or_else(|| item.get("metric"))
        .cloned()
        .unwrap_or(Value::Null);
    // serde_json's Map is ordered by key, so this prints labels canonically.
    labels.to_string()
}

fn is_series_list(v: &[Value]) -> bool {
    v.iter()
        .all(|i| i.get("stream").is_some() || i.get("metric").is_some())
}

/// What the comparison knows of the body: whether its result holds samples.
struct Cx {
    /// `data.resultType` is `matrix`, `vector` or `scalar`: `[time, "value"]` pairs in
    /// `values`, `value` and a scalar `result` are samples.
    samples: bool,
}

impl Cx {
    fn compare(&self, e: &Value, a: &Value, path: &str, out: &mut Vec<String>) {
        if out.len() > 40 {
            return;
        }
        match (e, a) {
            (Value::Object(eo), Value::Object(ao)) => {
                for (k, ev) in eo {
                    let p = format!("{path}.{k}");
                    match ao.get(k) {
                        Some(av) if self.samples && k == "values" => {
                            self.compare_sample_list(ev, av, &p, out)
                        }
                        Some(av) if self.samples && k == "value" => compare_sample(ev, av, &p, out),
                        Some(av)
                            if self.samples
                                && p == "$.data.result"
                                && !ev.as_array().is_some_and(|v| is_series_list(v)) =>
                        {
                            compare_sample(ev, av, &p, out) // a scalar: `[time, "value"]`
                        }
                        Some(av) => self.compare(ev, av, &p, out),
                        None => out.push(format!("{p}: missing (expected {})", short(ev))),
                    }
                }
                for k in ao.keys().filter(|k| !eo.contains_key(*k)) {
                    out.push(format!("{path}.{k}: unexpected key"));
                }
            }
            (Value::Array(ea), Value::Array(aa))
                if path.ends_with(".result") && is_series_list(ea) =>
            {
                self.compare_series_sets(ea, aa, path, out)
            }
            (Value::Array(ea), Value::Array(aa)) if path == "$.data" => {
                compare_as_sets(ea, aa, path, out)
            }
            (Value::Array(ea), Value::Array(aa)) => {
                if ea.len() != aa.len() {
                    out.push(format!(
                        "{path}: length {} expected, got {}",
                        ea.len(),
                        aa.len()
                    ));
                }
                for (i, (ev, av)) in ea.iter().zip(aa).enumerate() {
                    self.compare(ev, av, &format!("{path}[{i}]"), out);
                }
            }
            (Value::Number(en), Value::Number(an)) if numbers_equal(en, an) => {}
            _ if e == a => {}
            _ => out.push(format!("{path}: expected {}, got {}", short(e), short(a))),
        }
    }

    fn compare_sample_list(&self, e: &Value, a: &Value, path: &str, out: &mut Vec<String>) {
        match (e.as_array(), a.as_array()) {
            (Some(ea), Some(aa)) => {
                if ea.len() != aa.len() {
                    out.push(format!(
                        "{path}: {} samples expected, got {}",
                        ea.len(),
                        aa.len()
                    ));
                }
                for (i, (ev, av)) in ea.iter().zip(aa).enumerate() {
                    compare_sample(ev, av, &format!("{path}[{i}]"), out);
                }
            }
            _ => self.compare(e, a, path, out),
        }
    }

    fn compare_series_sets(&self, e: &[Value], a: &[Value], path: &str, out: &mut Vec<String>) {
        let mut actual: Vec<(String, &Value)> = a.iter().map(|v| (series_key(v), v)).collect();
        for ev in e {
            let key = series_key(ev);
            match actual.iter().position(|(k, _)| *k == key) {
                Some(i) => {
                    let (_, av) = actual.remove(i);
                    self.compare(ev, av, &format!("{path}{{{key}}}"), out);
                }
                None => out.push(format!("{path}: missing series {key}")),
            }
        }
        for (key, _) in actual {
            out.push(format!("{path}: unexpected series {key}"));
        }
    }
}

/// One `[time, "value"]` sample: the time equal exactly (step-aligned), the value within
/// a relative 1e-9, or spelled exactly when either side is not a finite number.
fn compare_sample(e: &Value, a: &Value, path: &str, out: &mut Vec<String>) {
    let pair = |v: &Value| match v.as_array().map(Vec::as_slice) {
        Some([Value::Number(t), Value::String(v)]) => Some((t.clone(), v.clone())),
        _ => None,
    };
    let (Some((et, ev)), Some((at, av))) = (pair(e), pair(a)) else {
        out.push(format!(
            "{path}: expected sample {}, got {}",
            short(e),
            short(a)
        ));
        return;
    };
    if !numbers_equal(&et, &at) {
        out.push(format!("{path}: sample time {et} expected, got {at}"));
    }
    if !sample_values_match(&ev, &av) {
        out.push(format!("{path}: sample value {ev:?} expected, got {av:?}"));
    }
}

fn compare_as_sets(e: &[Value], a: &[Value], path: &str, out: &mut Vec<String>) {
    let key = |v: &Value| v.to_string();
    let mut actual: Vec<String> = a.iter().map(key).collect();
    for ev in e {
        let k = key(ev);
        match actual.iter().position(|x| *x == k) {
            Some(i) => {
                actual.remove(i);
            }
            None => out.push(format!("{path}: missing element {}", short(ev))),
        }
    }
    for k in actual {
        out.push(format!("{path}: unexpected element {k}"));
    }
}

/// JSON numbers that are the same number, however written (`60` and `60.0`).
fn numbers_equal(e: &serde_json::Number, a: &serde_json::Number) -> bool {
    match (e.as_i64(), a.as_i64()) {
        (Some(x), Some(y)) => x == y,
        _ => e.as_f64().is_some_and(|x| a.as_f64() == Some(x)),
    }
}

/// Sample values are strings: equal within a relative 1e-9 when both are finite numbers;
/// `NaN`, `+Inf`, `-Inf` (and anything else) must be spelled the same.
fn sample_values_match(e: &str, a: &str) -> bool {
    if e == a {
        return true;
    }
    match (e.parse::<f64>(), a.parse::<f64>()) {
        (Ok(x), Ok(y)) if x.is_finite() && y.is_finite() => floats_close(x, y),
        _ => false,
    }
}

fn floats_close(x: f64, y: f64) -> bool {
    if x == y {
        return true;
    }
    let scale = x.abs().max(y.abs());
    (x - y).abs() <= 1e-9 * scale
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.len() > 160 {
        let cut = (0..=160)
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        format!("{}…", &s[..cut])
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn series_compare_as_sets_but_values_in_order() {
        let e = json!({"status":"success","data":{"resultType":"streams","result":[
            {"stream":{"a":"1"},"values":[["2","x"],["1","y"]]},
            {"stream":{"a":"2"},"values":[["3","z"]]}]}});
        let swapped = json!({"status":"success","data":{"resultType":"streams","result":[
            {"stream":{"a":"2"},"values":[["3","z"]]},
            {"stream":{"a":"1"},"values":[["2","x"],["1","y"]]}]}});
        assert_eq!(diff(&e, &swapped), None);
        let reordered = json!({"status":"success","data":{"resultType":"streams","result":[
            {"stream":{"a":"2"},"values":[["3","z"]]},
            {"stream":{"a":"1"},"values":[["1","y"],["2","x"]]}]}});
        assert!(diff(&e, &reordered).is_some());
    }

    fn matrix(t: Value, v: &str) -> Value {
        json!({"status":"success","data":{"resultType":"matrix",
            "result":[{"metric":{},"values":[[t, v]]}]}})
    }

    #[test]
    fn sample_values_match_within_relative_tolerance_and_stats_are_ignored() {
        let mut e = matrix(json!(1), "0.1");
        e["data"]["stats"] = json!({"a": 1});
        assert_eq!(diff(&e, &matrix(json!(1), "0.10000000000000002")), None);
        assert!(diff(&e, &matrix(json!(1), "0.2")).is_some());
        assert!(diff(&e, &matrix(json!(1), "NaN")).is_some());
        let nan = matrix(json!(1), "NaN");
        assert_eq!(diff(&nan, &matrix(json!(1), "NaN")), None);
        assert!(diff(&matrix(json!(1), "+Inf"), &matrix(json!(1), "Inf")).is_some());
    }

    #[test]
    fn sample_times_must_be_equal_exactly() {
        let e = matrix(json!(1767225660), "3");
        assert_eq!(diff(&e, &matrix(json!(1767225660.0), "3")), None);
        assert!(diff(&e, &matrix(json!(1767225660.001), "3")).is_some());
        let scalar = |t: Value| json!({"data":{"resultType":"scalar","result":[t, "7"]}});
        assert!(diff(
            &scalar(json!(-3658231076116_i64)),
            &scalar(json!(-3658231076115_i64))
        )
        .is_some());
        let vector = |t: Value| {
            json!({"data":{"resultType":"vector",
            "result":[{"metric":{},"value":[t, "2"]}]}})
        };
        assert!(diff(
            &vector(json!(4000000000_i64)),
            &vector(json!(4000000001_i64))
        )
        .is_some());
    }

    #[test]
    fn log_lines_and_nanosecond_timestamps_must_be_identical_strings() {
        let streams = |ts: &str, line: &str| {
            json!({"data":{"resultType":"streams",
            "result":[{"stream":{"a":"1"},"values":[[ts, line]]}]}})
        };
        let e = streams("1767225600000000001", "1.0");
        // 1 ns apart: within 1e-9 relative of 1.7e18, yet a different entry.
        assert!(diff(&e, &streams("1767225600000000002", "1.0")).is_some());
        assert!(diff(&e, &streams("1767225600000000001", "1")).is_some());
        assert_eq!(diff(&e, &streams("1767225600000000001", "1.0")), None);
    }

    #[test]
    fn counts_outside_samples_compare_exactly() {
        let e = json!({"streams": 5, "chunks": 10, "bytes": 528384, "entries": 3568});
        let a = json!({"streams": 5, "chunks": 10, "bytes": 528385, "entries": 3568});
        assert!(diff(&e, &a).is_some());
    }

    #[test]
    fn label_lists_compare_as_sets() {
        let e = json!({"status":"success","data":["a","b"]});
        assert_eq!(
            diff(&e, &json!({"status":"success","data":["b","a"]})),
            None
        );
        assert!(diff(&e, &json!({"status":"success","data":["a"]})).is_some());
    }
}
