//! Compares a Lode response body with Loki's expected body by the conformance README's
//! rules: `stats` ignored; objects as maps; `streams`/`matrix`/`vector` results as sets
//! of series keyed by label set with values in order; label/series `data` lists as sets;
//! sample values equal within a relative 1e-9 (`NaN`, `+Inf`, `-Inf` spelled exactly).

use serde_json::Value;

/// Returns `None` when equal, or a readable description of every difference found.
pub fn diff(expected: &Value, actual: &Value) -> Option<String> {
    let mut out = Vec::new();
    compare(&strip_stats(expected), &strip_stats(actual), "$", &mut out);
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

fn compare(e: &Value, a: &Value, path: &str, out: &mut Vec<String>) {
    if out.len() > 40 {
        return;
    }
    match (e, a) {
        (Value::Object(eo), Value::Object(ao)) => {
            for (k, ev) in eo {
                match ao.get(k) {
                    Some(av) => compare(ev, av, &format!("{path}.{k}"), out),
                    None => out.push(format!("{path}.{k}: missing (expected {})", short(ev))),
                }
            }
            for k in ao.keys().filter(|k| !eo.contains_key(*k)) {
                out.push(format!("{path}.{k}: unexpected key"));
            }
        }
        (Value::Array(ea), Value::Array(aa)) if path.ends_with(".result") && is_series_list(ea) => {
            compare_series_sets(ea, aa, path, out)
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
                compare(ev, av, &format!("{path}[{i}]"), out);
            }
        }
        (Value::String(es), Value::String(as_)) if es != as_ => {
            if !numbers_close(es, as_) {
                out.push(format!("{path}: expected {es:?}, got {as_:?}"));
            }
        }
        (Value::Number(en), Value::Number(an)) => {
            let (x, y) = (
                en.as_f64().unwrap_or(f64::NAN),
                an.as_f64().unwrap_or(f64::NAN),
            );
            if !floats_close(x, y) {
                out.push(format!("{path}: expected {en}, got {an}"));
            }
        }
        _ if e == a => {}
        _ => out.push(format!("{path}: expected {}, got {}", short(e), short(a))),
    }
}

fn compare_series_sets(e: &[Value], a: &[Value], path: &str, out: &mut Vec<String>) {
    let mut actual: Vec<(String, &Value)> = a.iter().map(|v| (series_key(v), v)).collect();
    for ev in e {
        let key = series_key(ev);
        match actual.iter().position(|(k, _)| *k == key) {
            Some(i) => {
                let (_, av) = actual.remove(i);
                compare(ev, av, &format!("{path}{{{key}}}"), out);
            }
            None => out.push(format!("{path}: missing series {key}")),
        }
    }
    for (key, _) in actual {
        out.push(format!("{path}: unexpected series {key}"));
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

/// Sample values are strings; equal within a relative 1e-9 when both are numbers.
fn numbers_close(e: &str, a: &str) -> bool {
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

    #[test]
    fn sample_values_match_within_relative_tolerance_and_stats_are_ignored() {
        let e = json!({"data":{"result":[{"metric":{},"values":[[1,"0.1"]]}],"stats":{"a":1}}});
        let a = json!({"data":{"result":[{"metric":{},"values":[[1,"0.10000000000000002"]]}]}});
        assert_eq!(diff(&e, &a), None);
        let far = json!({"data":{"result":[{"metric":{},"values":[[1,"0.2"]]}]}});
        assert!(diff(&e, &far).is_some());
        let nan = json!({"data":{"result":[{"metric":{},"values":[[1,"NaN"]]}]}});
        assert!(diff(&e, &nan).is_some());
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
