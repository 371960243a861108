//! Vector-level evaluation: vector aggregations, binary operators, `vector()`,
//! `label_replace`, over series-major intermediate results.
//!
//! Grouping keys and match signatures depend only on a series' labels, so they are
//! computed once per series, not once per step; per-step work is limited to what the
//! semantics need (joins, top-k selection, duplicate detection).

use std::collections::HashMap;

use regex::Regex;

use super::log_query::print_labels;
use super::range::{eval_range_agg, Ctx, Hint, MSeries, Matrix, StepGrid};
use super::EvalError;
use crate::log::Labels;
use crate::syntax::ast::{
    BinOp, BinOpExpr, GroupSide, Grouping, LabelReplace, MetricExpr, VectorAggregation,
    VectorMatching, VectorOp,
};

/// The value of a metric sub-expression.
pub(crate) enum Value {
    Scalar(f64),
    Vector(Matrix),
}

pub(crate) fn constant_series(v: f64, grid: &StepGrid) -> Matrix {
    Matrix {
        series: vec![MSeries {
            labels: Vec::new(),
            points: (0..grid.len()).map(|i| (i as u32, v)).collect(),
        }],
    }
}

/// The labels an aggregation reads, for parser hints, when it drops all others.
fn hint_for(agg: &VectorAggregation) -> Hint {
    match (&agg.op, &agg.grouping) {
        (
            VectorOp::Topk
            | VectorOp::Bottomk
            | VectorOp::Sort
            | VectorOp::SortDesc
            | VectorOp::ApproxTopk,
            _,
        ) => Hint::default(),
        (_, Some(Grouping::Without(_))) => Hint::default(),
        (op, Some(Grouping::By(names))) => Hint {
            wanted: Some(names.clone()),
            sum: *op == VectorOp::Sum,
        },
        (op, None) => Hint {
            wanted: Some(Vec::new()),
            sum: *op == VectorOp::Sum,
        },
    }
}

pub(crate) fn eval_value(
    expr: &MetricExpr,
    ctx: &Ctx<'_>,
    hint: &Hint,
) -> Result<Value, EvalError> {
    Ok(match expr {
        MetricExpr::Literal(v) => Value::Scalar(*v),
        MetricExpr::Vector(v) => Value::Vector(constant_series(*v, ctx.grid)),
        MetricExpr::RangeAggregation(agg) => Value::Vector(eval_range_agg(agg, ctx, hint)?),
        MetricExpr::VectorAggregation(agg) => {
            let inner_hint = hint_for(agg);
            let inner = match eval_value(&agg.inner, ctx, &inner_hint)? {
                Value::Scalar(v) => constant_series(v, ctx.grid),
                Value::Vector(m) => m,
            };
            Value::Vector(aggregate(agg, inner, ctx.grid))
        }
        MetricExpr::BinOp(b) => binop(b, ctx)?,
        MetricExpr::LabelReplace(lr) => {
            let inner = match eval_value(&lr.inner, ctx, &Hint::default())? {
                Value::Scalar(v) => constant_series(v, ctx.grid),
                Value::Vector(m) => m,
            };
            Value::Vector(label_replace(lr, inner)?)
        }
    })
}

fn group_key(labels: &Labels, grouping: &Option<Grouping>) -> Labels {
    match grouping {
        None => Vec::new(),
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

#[derive(Clone, Copy)]
struct Acc {
    count: f64,
    sum: f64,
    mean: f64,
    m2: f64,
    extreme: f64,
}

impl Acc {
    fn new(v: f64) -> Self {
        Acc {
            count: 1.0,
            sum: v,
            mean: v,
            m2: 0.0,
            extreme: v,
        }
    }

    fn add(&mut self, op: VectorOp, v: f64) {
        self.count += 1.0;
        match op {
            VectorOp::Sum => self.sum += v,
            VectorOp::Avg => {
                if self.mean.is_infinite() {
                    if v.is_infinite() && (self.mean > 0.0) == (v > 0.0) {
                        return;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        return;
                    }
                }
                self.mean += v / self.count - self.mean / self.count;
            }
            VectorOp::Max if v > self.extreme || self.extreme.is_nan() => self.extreme = v,
            VectorOp::Min if v < self.extreme || self.extreme.is_nan() => self.extreme = v,
            VectorOp::Stddev | VectorOp::Stdvar => {
                let delta = v - self.mean;
                self.mean += delta / self.count;
                self.m2 += delta * (v - self.mean);
            }
            _ => {}
        }
    }

    fn result(&self, op: VectorOp) -> f64 {
        match op {
            VectorOp::Sum => self.sum,
            VectorOp::Avg => self.mean,
            VectorOp::Max | VectorOp::Min => self.extreme,
            VectorOp::Count => self.count,
            VectorOp::Stdvar => self.m2 / self.count,
            VectorOp::Stddev => (self.m2 / self.count).sqrt(),
            _ => f64::NAN,
        }
    }
}

fn aggregate(agg: &VectorAggregation, inner: Matrix, grid: &StepGrid) -> Matrix {
    match agg.op {
        VectorOp::Topk | VectorOp::Bottomk | VectorOp::ApproxTopk => {
            let k = usize::try_from(agg.param.unwrap_or(1)).unwrap_or(1);
            top_k(inner, &agg.grouping, k, agg.op == VectorOp::Bottomk, grid)
        }
        VectorOp::Sort | VectorOp::SortDesc => {
            let mut m = inner;
            if grid.len() == 1 {
                let desc = agg.op == VectorOp::SortDesc;
                let value = |s: &MSeries| s.points.first().map(|p| p.1).unwrap_or(f64::NAN);
                m.series.sort_by(|a, b| {
                    let o = value(a).total_cmp(&value(b));
                    if desc {
                        o.reverse()
                    } else {
                        o
                    }
                });
            }
            m
        }
        op => {
            let mut groups: Vec<(Labels, Vec<Option<Acc>>)> = Vec::new();
            let mut index: HashMap<Labels, usize> = HashMap::new();
            for s in &inner.series {
                let key = group_key(&s.labels, &agg.grouping);
                let gi = match index.get(&key) {
                    Some(&i) => i,
                    None => {
                        groups.push((key.clone(), vec![None; grid.len()]));
                        index.insert(key, groups.len() - 1);
                        groups.len() - 1
                    }
                };
                let Some((_, accs)) = groups.get_mut(gi) else {
                    continue;
                };
                for &(step, v) in &s.points {
                    if let Some(slot) = accs.get_mut(step as usize) {
                        match slot {
                            Some(a) => a.add(op, v),
                            None => *slot = Some(Acc::new(v)),
                        }
                    }
                }
            }
            Matrix {
                series: groups
                    .into_iter()
                    .map(|(labels, accs)| MSeries {
                        labels,
                        points: accs
                            .iter()
                            .enumerate()
                            .filter_map(|(i, a)| a.map(|a| (i as u32, a.result(op))))
                            .collect(),
                    })
                    .collect(),
            }
        }
    }
}

fn top_k(
    inner: Matrix,
    grouping: &Option<Grouping>,
    k: usize,
    bottom: bool,
    grid: &StepGrid,
) -> Matrix {
    let mut group_ids: HashMap<Labels, usize> = HashMap::new();
    let series_group: Vec<usize> = inner
        .series
        .iter()
        .map(|s| {
            let key = group_key(&s.labels, grouping);
            let next = group_ids.len();
            *group_ids.entry(key).or_insert(next)
        })
        .collect();
    // Per step: (group, value, series).
    let mut per_step: Vec<Vec<(usize, f64, usize)>> = vec![Vec::new(); grid.len()];
    for (si, s) in inner.series.iter().enumerate() {
        for &(step, v) in &s.points {
            if let Some(bucket) = per_step.get_mut(step as usize) {
                bucket.push((series_group[si], v, si));
            }
        }
    }
    let mut keep: Vec<Vec<(u32, f64)>> = vec![Vec::new(); inner.series.len()];
    for (step, mut bucket) in per_step.into_iter().enumerate() {
        bucket.sort_by(|a, b| {
            a.0.cmp(&b.0).then_with(|| {
                // NaN never wins a top or bottom slot.
                let (x, y) = (a.1, b.1);
                let o = match (x.is_nan(), y.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if bottom => x.total_cmp(&y),
                    _ => y.total_cmp(&x),
                };
                o.then_with(|| a.2.cmp(&b.2))
            })
        });
        let mut current = usize::MAX;
        let mut taken = 0;
        for (g, v, si) in bucket {
            if g != current {
                current = g;
                taken = 0;
            }
            if taken < k {
                taken += 1;
                if let Some(points) = keep.get_mut(si) {
                    points.push((step as u32, v));
                }
            }
        }
    }
    Matrix {
        series: inner
            .series
            .into_iter()
            .zip(keep)
            .filter(|(_, p)| !p.is_empty())
            .map(|(s, points)| MSeries {
                labels: s.labels,
                points,
            })
            .collect(),
    }
}

fn arith(op: BinOp, a: f64, b: f64) -> Option<f64> {
    Some(match op {
        BinOp::Add => a + b,
        BinOp::Sub => a - b,
        BinOp::Mul => a * b,
        // Loki, unlike PromQL, answers NaN for division and modulo by zero.
        BinOp::Div => {
            if b == 0.0 {
                f64::NAN
            } else {
                a / b
            }
        }
        BinOp::Mod => {
            if b == 0.0 {
                f64::NAN
            } else {
                a % b
            }
        }
        BinOp::Pow => a.powf(b),
        _ => return None,
    })
}

fn compare(op: BinOp, a: f64, b: f64) -> bool {
    match op {
        BinOp::Eq => a == b,
        BinOp::Neq => a != b,
        BinOp::Gt => a > b,
        BinOp::Gte => a >= b,
        BinOp::Lt => a < b,
        BinOp::Lte => a <= b,
        _ => false,
    }
}

/// The value of `a op b` for one matched pair: `None` filters the pair out.
fn combine(op: BinOp, return_bool: bool, a: f64, b: f64, keep: f64) -> Option<f64> {
    if op.is_comparison() {
        let ok = compare(op, a, b);
        if return_bool {
            Some(if ok { 1.0 } else { 0.0 })
        } else {
            ok.then_some(keep)
        }
    } else {
        arith(op, a, b)
    }
}

fn binop(b: &BinOpExpr, ctx: &Ctx<'_>) -> Result<Value, EvalError> {
    let lhs = eval_value(&b.lhs, ctx, &Hint::default())?;
    let rhs = eval_value(&b.rhs, ctx, &Hint::default())?;
    let rb = b.modifier.return_bool;
    Ok(match (lhs, rhs) {
        (Value::Scalar(x), Value::Scalar(y)) => {
            let v = if b.op.is_comparison() {
                if compare(b.op, x, y) {
                    1.0
                } else {
                    0.0
                }
            } else {
                arith(b.op, x, y).unwrap_or(f64::NAN)
            };
            Value::Scalar(v)
        }
        (Value::Vector(m), Value::Scalar(y)) => {
            Value::Vector(map_points(m, |x| combine(b.op, rb, x, y, x)))
        }
        (Value::Scalar(x), Value::Vector(m)) => {
            Value::Vector(map_points(m, |y| combine(b.op, rb, x, y, y)))
        }
        (Value::Vector(l), Value::Vector(r)) => {
            if b.op.is_set_operator() {
                Value::Vector(set_op(b.op, b.modifier.matching.as_ref(), l, r, ctx.grid))
            } else {
                Value::Vector(vector_binop(b, l, r, ctx.grid)?)
            }
        }
    })
}

fn map_points(m: Matrix, f: impl Fn(f64) -> Option<f64>) -> Matrix {
    Matrix {
        series: m
            .series
            .into_iter()
            .filter_map(|s| {
                let points: Vec<(u32, f64)> = s
                    .points
                    .iter()
                    .filter_map(|&(i, v)| f(v).map(|r| (i, r)))
                    .collect();
                (!points.is_empty()).then_some(MSeries {
                    labels: s.labels,
                    points,
                })
            })
            .collect(),
    }
}

fn signature(labels: &Labels, matching: Option<&VectorMatching>) -> Labels {
    match matching {
        None => labels.clone(),
        Some(m) if m.on => labels
            .iter()
            .filter(|(k, _)| m.labels.contains(k))
            .cloned()
            .collect(),
        Some(m) => labels
            .iter()
            .filter(|(k, _)| !m.labels.contains(k))
            .cloned()
            .collect(),
    }
}

/// Interns signatures so per-step joins work on small integers.
fn signature_ids(
    l: &Matrix,
    r: &Matrix,
    matching: Option<&VectorMatching>,
) -> (Vec<usize>, Vec<usize>, usize) {
    let mut ids: HashMap<Labels, usize> = HashMap::new();
    let mut id_of = |labels: &Labels| {
        let sig = signature(labels, matching);
        let next = ids.len();
        *ids.entry(sig).or_insert(next)
    };
    let lids = l.series.iter().map(|s| id_of(&s.labels)).collect();
    let rids = r.series.iter().map(|s| id_of(&s.labels)).collect();
    (lids, rids, ids.len())
}

fn steps_of(m: &Matrix, grid: &StepGrid) -> Vec<Vec<(usize, f64)>> {
    let mut per_step = vec![Vec::new(); grid.len()];
    for (si, s) in m.series.iter().enumerate() {
        for &(step, v) in &s.points {
            if let Some(b) = per_step.get_mut(step as usize) {
                b.push((si, v));
            }
        }
    }
    per_step
}

fn set_op(
    op: BinOp,
    matching: Option<&VectorMatching>,
    l: Matrix,
    r: Matrix,
    grid: &StepGrid,
) -> Matrix {
    let (lids, rids, n) = signature_ids(&l, &r, matching);
    let lsteps = steps_of(&l, grid);
    let rsteps = steps_of(&r, grid);
    let mut lkeep: Vec<Vec<(u32, f64)>> = vec![Vec::new(); l.series.len()];
    let mut rkeep: Vec<Vec<(u32, f64)>> = vec![Vec::new(); r.series.len()];
    let mut present = vec![false; n];
    for step in 0..grid.len() {
        present.iter_mut().for_each(|p| *p = false);
        let (ls, rs) = (&lsteps[step], &rsteps[step]);
        match op {
            BinOp::And | BinOp::Unless => {
                for &(ri, _) in rs {
                    present[rids[ri]] = true;
                }
                for &(li, v) in ls {
                    if present[lids[li]] == (op == BinOp::And) {
                        lkeep[li].push((step as u32, v));
                    }
                }
            }
            _ => {
                for &(li, v) in ls {
                    present[lids[li]] = true;
                    lkeep[li].push((step as u32, v));
                }
                for &(ri, v) in rs {
                    if !present[rids[ri]] {
                        rkeep[ri].push((step as u32, v));
                    }
                }
            }
        }
    }
    let mut series: Vec<MSeries> = Vec::new();
    for (s, points) in l.series.into_iter().zip(lkeep) {
        if !points.is_empty() {
            series.push(MSeries {
                labels: s.labels,
                points,
            });
        }
    }
    for (s, points) in r.series.into_iter().zip(rkeep) {
        if !points.is_empty() {
            series.push(MSeries {
                labels: s.labels,
                points,
            });
        }
    }
    merge_same_labels(series)
}

/// Merges series that ended up with equal labels (their points never share a step
/// when they come from a correct join; if they do, the first value is kept).
fn merge_same_labels(series: Vec<MSeries>) -> Matrix {
    let mut out: Vec<MSeries> = Vec::new();
    let mut index: HashMap<Labels, usize> = HashMap::new();
    for s in series {
        match index.get(&s.labels) {
            Some(&i) => {
                if let Some(existing) = out.get_mut(i) {
                    for p in s.points {
                        if !existing.points.iter().any(|q| q.0 == p.0) {
                            existing.points.push(p);
                        }
                    }
                    existing.points.sort_by_key(|p| p.0);
                }
            }
            None => {
                index.insert(s.labels.clone(), out.len());
                out.push(s);
            }
        }
    }
    Matrix { series: out }
}

fn result_labels(many: &Labels, one: Option<&Labels>, matching: Option<&VectorMatching>) -> Labels {
    match (matching, one) {
        (Some(m), Some(one)) if m.group.is_some() => {
            let include = match &m.group {
                Some(GroupSide::Left(ls)) | Some(GroupSide::Right(ls)) => ls.as_slice(),
                None => &[],
            };
            let mut out = many.clone();
            for name in include {
                out.retain(|(k, _)| k != name);
                if let Some((_, v)) = one.iter().find(|(k, _)| k == name) {
                    if !v.is_empty() {
                        out.push((name.clone(), v.clone()));
                    }
                }
            }
            out.sort();
            out
        }
        (Some(m), _) if m.on => many
            .iter()
            .filter(|(k, _)| m.labels.contains(k))
            .cloned()
            .collect(),
        (Some(m), _) => many
            .iter()
            .filter(|(k, _)| !m.labels.contains(k))
            .cloned()
            .collect(),
        (None, _) => many.clone(),
    }
}

fn vector_binop(b: &BinOpExpr, l: Matrix, r: Matrix, grid: &StepGrid) -> Result<Matrix, EvalError> {
    let matching = b.modifier.matching.as_ref();
    let group = matching.and_then(|m| m.group.as_ref());
    let right_is_many = matches!(group, Some(GroupSide::Right(_)));
    let (lids, rids, n) = signature_ids(&l, &r, matching);
    let lsteps = steps_of(&l, grid);
    let rsteps = steps_of(&r, grid);
    // The "one" side of the join is indexed by signature per step.
    let (one_m, one_ids, one_steps, many_m, many_ids, many_steps) = if right_is_many {
        (&l, &lids, &lsteps, &r, &rids, &rsteps)
    } else {
        (&r, &rids, &rsteps, &l, &lids, &lsteps)
    };
    let mut out: Vec<MSeries> = Vec::new();
    let mut out_index: HashMap<(usize, usize), usize> = HashMap::new();
    let mut one_at: Vec<Option<(usize, f64)>> = vec![None; n];
    let mut many_seen: Vec<bool> = vec![false; n];
    for step in 0..grid.len() {
        one_at.iter_mut().for_each(|x| *x = None);
        many_seen.iter_mut().for_each(|x| *x = false);
        for &(oi, v) in &one_steps[step] {
            let sig = one_ids[oi];
            if one_at[sig].is_some() {
                let side = if right_is_many { "left" } else { "right" };
                return Err(EvalError::DuplicateSeries {
                    side,
                    series: print_labels(&one_m.series[oi].labels),
                });
            }
            one_at[sig] = Some((oi, v));
        }
        for &(mi, mv) in &many_steps[step] {
            let sig = many_ids[mi];
            let Some((oi, ov)) = one_at[sig] else {
                continue;
            };
            if group.is_none() {
                if many_seen[sig] {
                    return Err(EvalError::ManyToOne {
                        series: print_labels(&many_m.series[mi].labels),
                    });
                }
                many_seen[sig] = true;
            }
            let (lv, rv) = if right_is_many { (ov, mv) } else { (mv, ov) };
            let Some(value) = combine(b.op, b.modifier.return_bool, lv, rv, lv) else {
                continue;
            };
            let slot = match out_index.get(&(mi, oi)) {
                Some(&s) => s,
                None => {
                    let labels = result_labels(
                        &many_m.series[mi].labels,
                        Some(&one_m.series[oi].labels),
                        matching,
                    );
                    out.push(MSeries {
                        labels,
                        points: Vec::new(),
                    });
                    out_index.insert((mi, oi), out.len() - 1);
                    out.len() - 1
                }
            };
            if let Some(s) = out.get_mut(slot) {
                s.points.push((step as u32, value));
            }
        }
    }
    Ok(merge_same_labels(out))
}

fn label_replace(lr: &LabelReplace, m: Matrix) -> Result<Matrix, EvalError> {
    let re =
        Regex::new(&format!("^(?:{})$", lr.regex)).map_err(|e| EvalError::LabelReplaceRegex {
            regex: lr.regex.clone(),
            reason: e.to_string(),
        })?;
    let series = m
        .series
        .into_iter()
        .map(|mut s| {
            let src = s
                .labels
                .iter()
                .find(|(k, _)| *k == lr.src)
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            if let Some(caps) = re.captures(src) {
                let mut value = String::new();
                caps.expand(&lr.replacement, &mut value);
                s.labels.retain(|(k, _)| *k != lr.dst);
                if !value.is_empty() {
                    s.labels.push((lr.dst.clone(), value));
                    s.labels.sort();
                }
            }
            s
        })
        .collect();
    Ok(merge_same_labels(series))
}
