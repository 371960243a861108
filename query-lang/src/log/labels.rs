//! The per-line label builder: the labels a log line carries while it runs through a
//! pipeline.
//!
//! Owns the three label categories Loki keeps apart — stream labels, structured metadata
//! and parsed labels — plus the error slot (`__error__`, `__error_details__`). Parsed
//! labels win over metadata, metadata over stream labels. Parsers add labels with the
//! `_extracted` and first-value-wins rules; `label_format` sets them outright. It does not
//! own how stages compute values, nor how series are keyed (the evaluator's).

use std::cell::Cell;

use lode_push::LabelSet;

/// The label a stage sets when it fails on a line.
pub const ERROR_LABEL: &str = "__error__";
/// The label holding the error text of [`ERROR_LABEL`].
pub const ERROR_DETAILS_LABEL: &str = "__error_details__";

/// Error kinds Loki writes into `__error__`.
pub const JSON_PARSER_ERR: &str = "JSONParserErr";
pub const LOGFMT_PARSER_ERR: &str = "LogfmtParserErr";
pub const LABEL_FILTER_ERR: &str = "LabelFilterErr";
pub const SAMPLE_EXTRACTION_ERR: &str = "SampleExtractionErr";
pub const TEMPLATE_FORMAT_ERR: &str = "TemplateFormatErr";

/// What a parsed label colliding with a stream or metadata label is renamed with.
const EXTRACTED_SUFFIX: &str = "_extracted";

/// Sorted `(name, value)` pairs: a line's final labels or a series' labels.
pub type Labels = Vec<(String, String)>;

/// Labels of one line split by where they came from, as the `categorize-labels`
/// response encoding needs them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CategorizedLabels {
    /// Stream labels that survived the pipeline.
    pub stream: Labels,
    /// Structured metadata that survived the pipeline.
    pub structured_metadata: Labels,
    /// Labels the pipeline added (parsers, `label_format`, errors).
    pub parsed: Labels,
}

/// Parsed labels of the current line in insertion order. Slots past `len` keep the
/// strings of earlier lines so that a new line's labels are copied into buffers that
/// already have capacity: parsers add several labels per line, and allocating two
/// strings for each was a quarter of a `| json` pipeline's time.
#[derive(Debug, Default)]
struct Parsed {
    slots: Vec<(String, String)>,
    len: usize,
    // One bit per live name (see `name_bit`): most "is it already there?" questions are
    // answered without comparing strings.
    mask: u64,
    // Reusable text for parsers (the JSON parser's flattened key prefix).
    scratch: String,
}

/// A bit standing for `name` in a 64-bit set of names; different names may share one.
#[inline]
pub(crate) fn name_bit(name: &str) -> u64 {
    let b = name.as_bytes();
    let first = b.first().copied().unwrap_or(0) as usize;
    let last = b.last().copied().unwrap_or(0) as usize;
    1u64 << ((b.len() ^ first.wrapping_mul(7) ^ last.wrapping_mul(13)) & 63)
}

impl Parsed {
    #[inline]
    fn as_slice(&self) -> &[(String, String)] {
        self.slots.get(..self.len).unwrap_or_default()
    }

    #[inline]
    fn as_mut_slice(&mut self) -> &mut [(String, String)] {
        self.slots.get_mut(..self.len).unwrap_or_default()
    }

    #[inline]
    fn contains(&self, name: &str) -> bool {
        self.mask & name_bit(name) != 0 && self.as_slice().iter().any(|(k, _)| k == name)
    }

    fn clear(&mut self) {
        self.len = 0;
        self.mask = 0;
    }

    fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.len = len;
            self.remask();
        }
    }

    fn remask(&mut self) {
        self.mask = self.as_slice().iter().fold(0, |m, (k, _)| m | name_bit(k));
    }

    /// Adds `name` (with `suffix`) = `value`. Lines of a stream mostly repeat the keys
    /// of the line before, so a slot already holding the name is not rewritten.
    #[inline]
    fn push(&mut self, name: &str, suffix: &str, value: &str) {
        if let Some((k, v)) = self.slots.get_mut(self.len) {
            if suffix.is_empty() {
                if k != name {
                    k.clear();
                    k.push_str(name);
                }
            } else {
                k.clear();
                k.push_str(name);
                k.push_str(suffix);
            }
            v.clear();
            v.push_str(value);
            self.mask |= name_bit(k);
        } else {
            let mut k = String::with_capacity(name.len() + suffix.len());
            k.push_str(name);
            k.push_str(suffix);
            self.mask |= name_bit(&k);
            self.slots.push((k, value.to_owned()));
        }
        self.len += 1;
    }

    fn push_owned(&mut self, name: &str, value: String) {
        self.push(name, "", "");
        if let Some(slot) = self.as_mut_slice().last_mut() {
            slot.1 = value;
        }
    }

    /// Removes the labels named `name`, keeping the order of the others.
    fn remove(&mut self, name: &str) {
        if self.mask & name_bit(name) == 0 {
            return;
        }
        let mut i = 0;
        while i < self.len {
            if self.slots.get(i).is_some_and(|(k, _)| k == name) {
                // Move the slot to the end of the live range, then out of it.
                if let Some(live) = self.slots.get_mut(i..self.len) {
                    live.rotate_left(1);
                }
                self.len -= 1;
            } else {
                i += 1;
            }
        }
        self.remask();
    }
}

/// The labels of the line being processed.
///
/// One builder serves every line of a stream: [`LabelsBuilder::reset`] clears what the
/// previous line's stages did, so the per-line cost is only what stages add.
#[derive(Debug)]
pub struct LabelsBuilder<'a> {
    stream: &'a LabelSet,
    // `name_bit`s of the stream's label names, and (computed when first asked, as most
    // lines never need it) of the line's metadata names with them.
    stream_mask: u64,
    base_mask: Cell<Option<u64>>,
    metadata: &'a [(String, String)],
    parsed: Parsed,
    // Stream or metadata names removed by `drop`, `keep` or a `label_format` rename.
    hidden: Vec<String>,
    error: Option<String>,
    error_details: Option<String>,
}

/// A point to return to with [`LabelsBuilder::rollback`].
#[derive(Debug)]
pub(crate) struct Checkpoint {
    parsed: usize,
    hidden: usize,
    error: Option<String>,
    error_details: Option<String>,
}

/// A line's labels relative to its stream's; see [`LabelsBuilder::delta`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelsDelta {
    metadata: Vec<(String, String)>,
    parsed: Vec<(String, String)>,
    hidden: Vec<String>,
    error: Option<String>,
    error_details: Option<String>,
}

/// The reusable storage of a [`LabelsBuilder`], for callers that cannot keep one builder
/// alive across lines (the builder borrows each line's structured metadata).
#[derive(Debug, Default)]
pub struct LabelBuffers(Parsed);

impl<'a> LabelsBuilder<'a> {
    /// A builder for lines of the stream labelled `stream`.
    pub fn new(stream: &'a LabelSet) -> Self {
        Self::with_buffers(stream, LabelBuffers::default())
    }

    /// A builder for lines of `stream` that reuses the storage of an earlier builder.
    pub fn with_buffers(stream: &'a LabelSet, buffers: LabelBuffers) -> Self {
        let mut parsed = buffers.0;
        parsed.clear();
        let stream_mask = stream.iter().fold(0, |m, (k, _)| m | name_bit(k));
        LabelsBuilder {
            stream,
            stream_mask,
            base_mask: Cell::new(None),
            metadata: &[],
            parsed,
            hidden: Vec::new(),
            error: None,
            error_details: None,
        }
    }

    /// Gives back the storage for [`Self::with_buffers`].
    pub fn into_buffers(self) -> LabelBuffers {
        LabelBuffers(self.parsed)
    }

    /// Starts a new line carrying `metadata` as structured metadata.
    pub fn reset(&mut self, metadata: &'a [(String, String)]) {
        self.metadata = metadata;
        self.base_mask.set(None);
        self.parsed.clear();
        self.hidden.clear();
        self.error = None;
        self.error_details = None;
    }

    /// The stream labels the builder started from.
    pub fn stream_labels(&self) -> &'a LabelSet {
        self.stream
    }

    /// True when no stage has changed any label of this line.
    pub fn is_unchanged(&self) -> bool {
        self.parsed.len == 0
            && self.hidden.is_empty()
            && self.error.is_none()
            && self.error_details.is_none()
            && self.metadata.is_empty()
    }

    /// The `name_bit`s of every stream and metadata name of the line.
    #[inline]
    fn base_mask(&self) -> u64 {
        if self.metadata.is_empty() {
            return self.stream_mask;
        }
        if let Some(m) = self.base_mask.get() {
            return m;
        }
        let m = self
            .metadata
            .iter()
            .fold(self.stream_mask, |m, (k, _)| m | name_bit(k));
        self.base_mask.set(Some(m));
        m
    }

    fn is_hidden(&self, name: &str) -> bool {
        self.hidden.iter().any(|h| h == name)
    }

    fn base_get(&self, name: &str) -> Option<&str> {
        if self.is_hidden(name) {
            return None;
        }
        if let Some((_, v)) = self.metadata.iter().rev().find(|(k, _)| k == name) {
            return Some(v);
        }
        self.stream.get(name)
    }

    /// The current value of `name`, `__error__` and `__error_details__` included.
    pub fn get(&self, name: &str) -> Option<&str> {
        match name {
            ERROR_LABEL => return self.error.as_deref(),
            ERROR_DETAILS_LABEL => return self.error_details.as_deref(),
            _ => {}
        }
        if let Some((_, v)) = self.parsed.as_slice().iter().find(|(k, _)| k == name) {
            return Some(v);
        }
        self.base_get(name)
    }

    /// Whether `name` is a (not removed) stream label or structured-metadata key: a parser
    /// producing the same name must suffix it with `_extracted`.
    #[inline]
    pub fn is_stream_or_metadata(&self, name: &str) -> bool {
        if self.base_mask() & name_bit(name) == 0 {
            return false;
        }
        self.base_get(name).is_some()
    }

    /// Whether a parser already produced `name` for this line.
    #[inline]
    pub fn has_parsed(&self, name: &str) -> bool {
        self.parsed.contains(name)
    }

    /// A reusable string for a parser's own bookkeeping; give it back with
    /// [`Self::put_scratch`] so the next line reuses its capacity.
    pub(crate) fn take_scratch(&mut self) -> String {
        let mut s = std::mem::take(&mut self.parsed.scratch);
        s.clear();
        s
    }

    /// Returns the string of [`Self::take_scratch`].
    pub(crate) fn put_scratch(&mut self, s: String) {
        self.parsed.scratch = s;
    }

    /// Adds a label produced by a parser: suffixed with `_extracted` when it collides with
    /// a stream or metadata label, and ignored when a parser already set it (first wins).
    #[inline]
    pub fn add_extracted(&mut self, name: &str, value: &str) {
        let bit = name_bit(name);
        if self.base_mask() & bit == 0 {
            // Neither a stream nor a metadata label: the common case.
            if self.parsed.mask & bit == 0 || !self.parsed.contains(name) {
                self.parsed.push(name, "", value);
            }
            return;
        }
        if self.is_stream_or_metadata(name) {
            let taken = self.parsed.as_slice().iter().any(|(k, _)| {
                k.strip_suffix(EXTRACTED_SUFFIX)
                    .is_some_and(|base| base == name)
            });
            if !taken {
                self.parsed.push(name, EXTRACTED_SUFFIX, value);
            }
        } else if !self.has_parsed(name) {
            self.parsed.push(name, "", value);
        }
    }

    /// Sets `name` to `value` as a parsed label, overriding any category (`label_format`).
    pub fn set(&mut self, name: &str, value: String) {
        match name {
            ERROR_LABEL => {
                self.error = Some(value);
                return;
            }
            ERROR_DETAILS_LABEL => {
                self.error_details = Some(value);
                return;
            }
            _ => {}
        }
        if let Some(slot) = self
            .parsed
            .as_mut_slice()
            .iter_mut()
            .find(|(k, _)| k == name)
        {
            slot.1 = value;
        } else {
            self.parsed.push_owned(name, value);
        }
    }

    /// Removes `name` from every category; removing an error label clears the error.
    pub fn delete(&mut self, name: &str) {
        match name {
            ERROR_LABEL => {
                self.error = None;
                return;
            }
            ERROR_DETAILS_LABEL => {
                self.error_details = None;
                return;
            }
            _ => {}
        }
        self.parsed.remove(name);
        if self.base_mask() & name_bit(name) != 0 && self.base_get(name).is_some() {
            self.hidden.push(name.to_owned());
        }
    }

    /// Remembers what the parsed labels and the error are now, so that a speculative
    /// run of stages (see [`crate::log::Pipeline`]'s parser probe) can be undone.
    pub(crate) fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            parsed: self.parsed.len,
            hidden: self.hidden.len(),
            error: self.error.clone(),
            error_details: self.error_details.clone(),
        }
    }

    /// Returns to the state of `c`, provided stages since then only added parsed labels,
    /// hid labels or set the error (parsers and label filters do nothing else).
    pub(crate) fn rollback(&mut self, c: Checkpoint) {
        self.parsed.truncate(c.parsed);
        self.hidden.truncate(c.hidden);
        self.error = c.error;
        self.error_details = c.error_details;
    }

    /// Whether a stage has set `__error__` on this line.
    pub fn has_error(&self) -> bool {
        self.error.is_some()
    }

    /// The `__error__` value, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Sets `__error__` and `__error_details__` (parser errors overwrite earlier ones).
    pub fn set_error(&mut self, kind: &str, details: impl Into<String>) {
        self.error = Some(kind.to_owned());
        let details = details.into();
        self.error_details = if details.is_empty() {
            None
        } else {
            Some(details)
        };
    }

    /// Sets the error only when none is set yet (label-filter and extraction errors).
    pub fn set_error_if_none(&mut self, kind: &str, details: impl Into<String>) {
        if self.error.is_none() {
            self.set_error(kind, details);
        }
    }

    /// Every current label name, unsorted, error labels included.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for (k, _) in self.stream.iter() {
            if !self.is_hidden(k) {
                names.push(k.to_owned());
            }
        }
        for (k, _) in self.metadata {
            if !self.is_hidden(k) && !names.contains(k) {
                names.push(k.clone());
            }
        }
        for (k, _) in self.parsed.as_slice() {
            if !names.contains(k) {
                names.push(k.clone());
            }
        }
        if self.error.is_some() {
            names.push(ERROR_LABEL.to_owned());
        }
        if self.error_details.is_some() {
            names.push(ERROR_DETAILS_LABEL.to_owned());
        }
        names
    }

    /// What sets this line's labels apart from its stream's: everything [`Self::labels`]
    /// adds to or removes from the stream labels. Two lines of one stream with equal
    /// deltas have equal labels, so a caller can key per-line work by the delta instead of
    /// building and hashing the whole label set.
    pub fn delta(&self) -> LabelsDelta {
        LabelsDelta {
            metadata: self.metadata.to_vec(),
            parsed: self.parsed.as_slice().to_vec(),
            hidden: self.hidden.clone(),
            error: self.error.clone(),
            error_details: self.error_details.clone(),
        }
    }

    /// Whether this line's delta equals `d` (see [`Self::delta`]), without allocating.
    pub fn delta_matches(&self, d: &LabelsDelta) -> bool {
        self.metadata == d.metadata.as_slice()
            && self.parsed.as_slice() == d.parsed.as_slice()
            && self.hidden == d.hidden
            && self.error == d.error
            && self.error_details == d.error_details
    }

    /// A hash of this line's delta, equal for lines whose deltas are equal.
    pub fn delta_hash(&self) -> u64 {
        use std::hash::{BuildHasher, Hasher};
        // Callers compare deltas on a hash match, so this hashes the bytes without the
        // separators `Hash` would add (equal deltas still hash equal), once per line.
        let mut h = foldhash::fast::FixedState::with_seed(0x6c6f6465).build_hasher();
        for (k, v) in self.metadata.iter().chain(self.parsed.as_slice()) {
            h.write(k.as_bytes());
            h.write(v.as_bytes());
        }
        for n in &self.hidden {
            h.write(n.as_bytes());
        }
        for e in [&self.error, &self.error_details].into_iter().flatten() {
            h.write(e.as_bytes());
        }
        let count = |n: usize| n as u64 & 0xffff;
        h.write_u64(
            count(self.metadata.len())
                | count(self.parsed.len) << 16
                | count(self.hidden.len()) << 32
                | u64::from(self.error.is_some()) << 48
                | u64::from(self.error_details.is_some()) << 49,
        );
        h.finish()
    }

    /// The line's final label set, sorted by name.
    pub fn labels(&self) -> Labels {
        let mut out: Labels =
            Vec::with_capacity(self.stream.len() + self.metadata.len() + self.parsed.len + 2);
        for (k, v) in self.stream.iter() {
            if !self.is_hidden(k) && !self.has_parsed(k) {
                out.push((k.to_owned(), v.to_owned()));
            }
        }
        for (k, v) in self.metadata {
            if !self.is_hidden(k) && !self.has_parsed(k) {
                // Metadata overrides a stream label of the same name.
                if let Some(slot) = out.iter_mut().find(|(n, _)| n == k) {
                    slot.1 = v.clone();
                } else {
                    out.push((k.clone(), v.clone()));
                }
            }
        }
        out.extend(self.parsed.as_slice().iter().cloned());
        if let Some(e) = &self.error {
            out.push((ERROR_LABEL.to_owned(), e.clone()));
        }
        if let Some(d) = &self.error_details {
            out.push((ERROR_DETAILS_LABEL.to_owned(), d.clone()));
        }
        out.sort();
        out
    }

    /// The final labels split into stream labels, structured metadata and parsed labels.
    pub fn categorized(&self) -> CategorizedLabels {
        let mut stream: Labels = self
            .stream
            .iter()
            .filter(|(k, _)| !self.is_hidden(k) && !self.has_parsed(k))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let mut structured_metadata: Labels = Vec::new();
        for (k, v) in self.metadata {
            if self.is_hidden(k) || self.has_parsed(k) {
                continue;
            }
            stream.retain(|(n, _)| n != k);
            structured_metadata.retain(|(n, _)| n != k);
            structured_metadata.push((k.clone(), v.clone()));
        }
        let mut parsed = self.parsed.as_slice().to_vec();
        if let Some(e) = &self.error {
            parsed.push((ERROR_LABEL.to_owned(), e.clone()));
        }
        if let Some(d) = &self.error_details {
            parsed.push((ERROR_DETAILS_LABEL.to_owned(), d.clone()));
        }
        structured_metadata.sort();
        parsed.sort();
        CategorizedLabels {
            stream,
            structured_metadata,
            parsed,
        }
    }
}

/// Loki's label-name sanitising for parsed keys: trim whitespace, every rune outside
/// `[A-Za-z0-9_]` becomes `_`, a leading digit gets a `_` prefix.
pub fn sanitize_label_name(raw: &str) -> String {
    let trimmed = raw.trim();
    let mut out = String::with_capacity(trimmed.len() + 1);
    for (i, c) in trimmed.chars().enumerate() {
        if i == 0 && c.is_ascii_digit() {
            out.push('_');
        }
        if c.is_ascii_alphanumeric() || c == '_' {
            out.push(c);
        } else {
            out.push('_');
        }
    }
    out
}

/// Bytes allowed in a label name: `[A-Za-z0-9_]`.
const NAME_BYTE: [bool; 256] = {
    let mut t = [false; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        t[i] = c.is_ascii_alphanumeric() || c == b'_';
        i += 1;
    }
    t
};

/// True when `raw` is already a valid label name (the common case: no allocation needed).
#[inline]
pub(crate) fn is_clean_label_name(raw: &str) -> bool {
    let b = raw.as_bytes();
    match b.first() {
        Some(c) if c.is_ascii_alphabetic() || *c == b'_' => {}
        _ => return false,
    }
    b.iter().all(|&c| NAME_BYTE[usize::from(c)])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream() -> LabelSet {
        LabelSet::from_pairs([("app", "x"), ("cluster", "c1")]).unwrap()
    }

    #[test]
    fn parsed_label_colliding_with_stream_label_gets_extracted_suffix() {
        let s = stream();
        let mut lb = LabelsBuilder::new(&s);
        lb.add_extracted("cluster", "c2");
        lb.add_extracted("level", "error");
        assert_eq!(lb.get("cluster"), Some("c1"));
        assert_eq!(lb.get("cluster_extracted"), Some("c2"));
        assert_eq!(
            lb.labels(),
            vec![
                ("app".to_owned(), "x".to_owned()),
                ("cluster".to_owned(), "c1".to_owned()),
                ("cluster_extracted".to_owned(), "c2".to_owned()),
                ("level".to_owned(), "error".to_owned()),
            ]
        );
    }

    #[test]
    fn first_parsed_value_wins_but_label_format_overrides() {
        let s = stream();
        let mut lb = LabelsBuilder::new(&s);
        lb.add_extracted("level", "info");
        lb.add_extracted("level", "debug");
        assert_eq!(lb.get("level"), Some("info"));
        lb.set("level", "warn".to_owned());
        assert_eq!(lb.get("level"), Some("warn"));
        lb.set("app", "y".to_owned());
        assert_eq!(lb.get("app"), Some("y"));
        let c = lb.categorized();
        assert!(c.stream.iter().all(|(k, _)| k != "app"));
        assert!(c.parsed.contains(&("app".to_owned(), "y".to_owned())));
    }

    #[test]
    fn delete_hides_stream_labels_and_clears_errors() {
        let s = stream();
        let mut lb = LabelsBuilder::new(&s);
        lb.set_error(JSON_PARSER_ERR, "bad");
        lb.delete("cluster");
        lb.delete(ERROR_LABEL);
        assert_eq!(lb.get("cluster"), None);
        assert!(!lb.has_error());
        assert_eq!(lb.get(ERROR_DETAILS_LABEL), Some("bad"));
        lb.reset(&[]);
        assert_eq!(lb.get("cluster"), Some("c1"));
        assert!(lb.is_unchanged());
    }

    #[test]
    fn sanitizing_replaces_each_foreign_rune_and_prefixes_leading_digit() {
        assert_eq!(sanitize_label_name(" a.b-c "), "a_b_c");
        assert_eq!(sanitize_label_name("1st"), "_1st");
        assert_eq!(sanitize_label_name("é"), "_");
        assert_eq!(sanitize_label_name("   "), "");
    }
}
