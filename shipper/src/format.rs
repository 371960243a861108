//! Container log line formats: CRI text, Docker `json-file`, and plain text.
//!
//! Owns parsing one raw line (without its `\n`) into a record, re-joining lines the
//! runtime split (CRI `P` partials, Docker chunks without a trailing newline) per file and
//! stream, capping joined lines at `max_line_size`, and deciding the checkpoint offset that
//! is safe to commit once an entry is acknowledged. It does not own reading files
//! (`tailer`) or labels (`pipeline`).
//!
//! The format is detected per line: a line starting with `{` that decodes as Docker JSON
//! is Docker, a line shaped like `<RFC3339Nano> <stdout|stderr> <P|F>[:tags] <message>` is
//! CRI, anything else is plain text. A line that fails to parse in a file that has already
//! produced CRI or Docker records is *malformed*: it is shipped verbatim (nothing is lost)
//! with the file's last stream and timestamp, and counted.
//!
//! Joined entries carry the timestamp of their **first** fragment: that is when the
//! runtime began reading the line.

use std::borrow::Cow;

/// Which output stream of the container a record came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// The `stream` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
        }
    }
}

/// The wrapper format of a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    Cri,
    Docker,
    Plain,
}

impl LineFormat {
    /// The `format` label value of the malformed-lines metric.
    pub fn as_str(self) -> &'static str {
        match self {
            LineFormat::Cri => "cri",
            LineFormat::Docker => "docker",
            LineFormat::Plain => "plain",
        }
    }
}

/// One raw line after unwrapping its runtime envelope.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// A CRI or Docker record.
    Record {
        format: LineFormat,
        timestamp_ns: i64,
        stream: Stream,
        /// More fragments of the same line follow.
        partial: bool,
        message: Cow<'a, [u8]>,
    },
    /// Not a runtime record.
    Plain(&'a [u8]),
}

/// Parses one line (no trailing `\n`), detecting its format.
pub fn parse_line(line: &[u8]) -> Parsed<'_> {
    if line.first() == Some(&b'{') {
        if let Some(p) = parse_docker(line) {
            return p;
        }
    }
    parse_cri(line).unwrap_or(Parsed::Plain(line))
}

fn parse_timestamp(ts: &[u8]) -> Option<i64> {
    let ts = std::str::from_utf8(ts).ok()?;
    chrono::DateTime::parse_from_rfc3339(ts)
        .ok()?
        .timestamp_nanos_opt()
}

fn parse_cri(line: &[u8]) -> Option<Parsed<'_>> {
    let sp = memchr::memchr(b' ', line)?;
    let timestamp_ns = parse_timestamp(line.get(..sp)?)?;
    let rest = line.get(sp + 1..)?;
    let stream = if rest.starts_with(b"stdout ") {
        Stream::Stdout
    } else if rest.starts_with(b"stderr ") {
        Stream::Stderr
    } else {
        return None;
    };
    let rest = rest.get(7..)?;
    // Tags run to the next space; an empty message may omit that space.
    let (tags, message) = match memchr::memchr(b' ', rest) {
        Some(i) => (rest.get(..i)?, rest.get(i + 1..)?),
        None => (rest, &[][..]),
    };
    // The CRI spec allows future ':'-separated tags; the first one decides.
    let first = tags.split(|&b| b == b':').next()?;
    let partial = match first {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    Some(Parsed::Record {
        format: LineFormat::Cri,
        timestamp_ns,
        stream,
        partial,
        message: Cow::Borrowed(message),
    })
}

#[derive(serde::Deserialize)]
struct DockerLine<'a> {
    #[serde(borrow)]
    log: Cow<'a, str>,
    #[serde(borrow)]
    stream: Cow<'a, str>,
    #[serde(borrow)]
    time: Cow<'a, str>,
}

fn parse_docker(line: &[u8]) -> Option<Parsed<'_>> {
    let d: DockerLine<'_> = serde_json::from_slice(line).ok()?;
    let stream = match d.stream.as_ref() {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    let timestamp_ns = parse_timestamp(d.time.as_bytes())?;
    // Docker splits messages at 16 KiB: every chunk but the last lacks the newline.
    let (partial, message) = match d.log {
        Cow::Borrowed(s) => match s.strip_suffix('\n') {
            Some(m) => (false, Cow::Borrowed(m.as_bytes())),
            None => (true, Cow::Borrowed(s.as_bytes())),
        },
        Cow::Owned(mut s) => {
            let partial = !s.ends_with('\n');
            if !partial {
                s.pop();
            }
            (partial, Cow::Owned(s.into_bytes()))
        }
    };
    Some(Parsed::Record {
        format: LineFormat::Docker,
        timestamp_ns,
        stream,
        partial,
        message,
    })
}

/// A complete entry ready for labelling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The runtime's timestamp; `None` for plain text (the tailer stamps read time).
    pub timestamp_ns: Option<i64>,
    /// `None` for plain-text files.
    pub stream: Option<Stream>,
    /// `None` when the line was over `max_line_size` and dropped (not truncated).
    pub line: Option<String>,
    /// Once this entry and all before it are acknowledged, reading may resume here.
    pub commit_offset: u64,
}

/// Counts of problems seen by a [`FileParser`], drained by the tailer into metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ParseStats {
    pub malformed: u64,
    pub truncated: u64,
    pub dropped_too_long: u64,
    pub invalid_utf8: u64,
}

struct Pending {
    timestamp_ns: i64,
    start_offset: u64,
    buf: Vec<u8>,
    overflowed: bool,
}

/// Per-file parsing state: detected format and partial lines awaiting their end.
pub struct FileParser {
    max_line_size: usize,
    truncate: bool,
    format: Option<LineFormat>,
    pending: [Option<Pending>; 2],
    last_stream: Stream,
    last_timestamp_ns: Option<i64>,
    pub stats: ParseStats,
}

impl std::fmt::Debug for FileParser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileParser")
            .field("format", &self.format)
            .field("stats", &self.stats)
            .finish()
    }
}

impl FileParser {
    /// `max_line_size` caps every entry's line in bytes; longer ones are truncated when
    /// `truncate` is set, else dropped.
    pub fn new(max_line_size: usize, truncate: bool) -> Self {
        FileParser {
            max_line_size,
            truncate,
            format: None,
            pending: [None, None],
            last_stream: Stream::Stdout,
            last_timestamp_ns: None,
            stats: ParseStats::default(),
        }
    }

    /// The format detected from the first parsed line, if any.
    pub fn format(&self) -> Option<LineFormat> {
        self.format
    }

    /// Forgets partial lines and the detected format (the file was truncated).
    pub fn reset(&mut self) {
        self.pending = [None, None];
        self.format = None;
    }

    fn earliest_pending(&self) -> Option<u64> {
        self.pending.iter().flatten().map(|p| p.start_offset).min()
    }

    fn commit_offset(&self, line_end: u64) -> u64 {
        // Resuming past the start of a partial line still being joined would lose its
        // first fragments, so the checkpoint stops there.
        self.earliest_pending()
            .map_or(line_end, |p| p.min(line_end))
    }

    /// Feeds one raw line spanning `[line_start, line_end)` of the file (`line_end`
    /// includes the newline) and appends any completed entry to `out`.
    pub fn push_line(&mut self, raw: &[u8], line_start: u64, line_end: u64, out: &mut Vec<Record>) {
        match parse_line(raw) {
            Parsed::Record {
                format,
                timestamp_ns,
                stream,
                partial,
                message,
            } => {
                self.format.get_or_insert(format);
                self.last_stream = stream;
                self.last_timestamp_ns = Some(timestamp_ns);
                let slot = &mut self.pending[stream.index()];
                let p = slot.get_or_insert_with(|| Pending {
                    timestamp_ns,
                    start_offset: line_start,
                    buf: Vec::new(),
                    overflowed: false,
                });
                let room = self.max_line_size.saturating_sub(p.buf.len());
                if message.len() > room {
                    p.overflowed = true;
                }
                p.buf
                    .extend_from_slice(message.get(..room.min(message.len())).unwrap_or(&[]));
                if partial {
                    return;
                }
                if let Some(p) = slot.take() {
                    let commit_offset = self.commit_offset(line_end);
                    self.emit(
                        p.buf,
                        p.overflowed,
                        Some(p.timestamp_ns),
                        Some(stream),
                        commit_offset,
                        out,
                    );
                }
            }
            Parsed::Plain(line) => {
                let (timestamp_ns, stream) = match self.format {
                    Some(LineFormat::Cri | LineFormat::Docker) => {
                        self.stats.malformed += 1;
                        (self.last_timestamp_ns, Some(self.last_stream))
                    }
                    _ => {
                        self.format = Some(LineFormat::Plain);
                        (None, None)
                    }
                };
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let overflowed = line.len() > self.max_line_size;
                let kept = line.get(..self.max_line_size).unwrap_or(line).to_vec();
                let commit_offset = self.commit_offset(line_end);
                self.emit(kept, overflowed, timestamp_ns, stream, commit_offset, out);
            }
        }
    }

    /// Emits whatever partial lines are still open (the file ended without their final
    /// fragment, e.g. a container exited mid-line), as of file offset `end`.
    pub fn flush(&mut self, end: u64, out: &mut Vec<Record>) {
        let mut open: Vec<(Stream, Pending)> = Vec::new();
        for stream in [Stream::Stdout, Stream::Stderr] {
            if let Some(p) = self.pending[stream.index()].take() {
                open.push((stream, p));
            }
        }
        open.sort_by_key(|(_, p)| p.start_offset);
        for (stream, p) in open {
            self.emit(
                p.buf,
                p.overflowed,
                Some(p.timestamp_ns),
                Some(stream),
                end,
                out,
            );
        }
    }

    fn emit(
        &mut self,
        bytes: Vec<u8>,
        overflowed: bool,
        timestamp_ns: Option<i64>,
        stream: Option<Stream>,
        commit_offset: u64,
        out: &mut Vec<Record>,
    ) {
        if overflowed && !self.truncate {
            self.stats.dropped_too_long += 1;
            // The entry is gone but its bytes are consumed: let the checkpoint pass it.
            out.push(Record {
                timestamp_ns,
                stream,
                line: None,
                commit_offset,
            });
            return;
        }
        if overflowed {
            self.stats.truncated += 1;
        }
        let mut line = match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => {
                self.stats.invalid_utf8 += 1;
                String::from_utf8_lossy(e.as_bytes()).into_owned()
            }
        };
        if line.len() > self.max_line_size {
            // Replacement characters can grow a lossy line past the cap.
            let mut cut = self.max_line_size;
            while !line.is_char_boundary(cut) {
                cut -= 1;
            }
            line.truncate(cut);
        }
        out.push(Record {
            timestamp_ns,
            stream,
            line: Some(line),
            commit_offset,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(p: &mut FileParser, text: &[u8]) -> Vec<Record> {
        let mut out = Vec::new();
        let mut off = 0u64;
        for line in text.split_inclusive(|&b| b == b'\n') {
            let raw = line.strip_suffix(b"\n").unwrap_or(line);
            p.push_line(raw, off, off + line.len() as u64, &mut out);
            off += line.len() as u64;
        }
        out
    }

    #[test]
    fn cri_lines_parse_with_utc_and_offset_timestamps_and_variable_fractions() {
        let Parsed::Record {
            timestamp_ns,
            stream,
            partial,
            message,
            format,
        } = parse_line(b"2024-05-01T10:00:00.1Z stdout F hello world")
        else {
            panic!("not a record")
        };
        assert_eq!(format, LineFormat::Cri);
        assert_eq!(timestamp_ns, 1_714_557_600_100_000_000);
        assert_eq!(stream, Stream::Stdout);
        assert!(!partial);
        assert_eq!(&*message, b"hello world");

        let Parsed::Record {
            timestamp_ns,
            stream,
            ..
        } = parse_line(b"2024-05-01T19:00:00+09:00 stderr F x")
        else {
            panic!("not a record")
        };
        assert_eq!(timestamp_ns, 1_714_557_600_000_000_000);
        assert_eq!(stream, Stream::Stderr);
    }

    #[test]
    fn cri_tolerates_extra_tags_and_an_empty_message() {
        assert!(matches!(
            parse_line(b"2024-05-01T10:00:00Z stdout P:x:y part"),
            Parsed::Record { partial: true, .. }
        ));
        let Parsed::Record { message, .. } = parse_line(b"2024-05-01T10:00:00Z stdout F") else {
            panic!("not a record")
        };
        assert!(message.is_empty());
    }

    #[test]
    fn lines_that_are_not_cri_or_docker_are_plain() {
        for l in [
            &b"hello"[..],
            b"2024-05-01T10:00:00Z stdin F x",
            b"2024-05-01T10:00:00Z stdout X x",
            b"not-a-time stdout F x",
            b"{\"msg\":\"app json, not docker\"}",
            b"",
        ] {
            assert_eq!(parse_line(l), Parsed::Plain(l));
        }
    }

    #[test]
    fn docker_lines_strip_the_newline_and_unescape() {
        let Parsed::Record { message, partial, stream, timestamp_ns, format } = parse_line(
            br#"{"log":"a \"q\" \u001b[0m\n","stream":"stderr","time":"2024-05-01T10:00:00.123456789Z"}"#,
        ) else {
            panic!("not a record")
        };
        assert_eq!(format, LineFormat::Docker);
        assert_eq!(&*message, "a \"q\" \u{1b}[0m".as_bytes());
        assert!(!partial);
        assert_eq!(stream, Stream::Stderr);
        assert_eq!(timestamp_ns, 1_714_557_600_123_456_789);
    }

    #[test]
    fn cri_partials_join_per_stream_even_when_interleaved() {
        let mut p = FileParser::new(1 << 20, true);
        let text = b"2024-05-01T10:00:00.1Z stdout P aaa\n\
2024-05-01T10:00:00.2Z stderr F err\n\
2024-05-01T10:00:00.3Z stdout P bbb\n\
2024-05-01T10:00:00.4Z stdout F ccc\n";
        let out = feed(&mut p, text);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].line.as_deref(), Some("err"));
        // The first stdout fragment started at 0: resuming after the stderr entry must
        // not skip it.
        assert_eq!(out[0].commit_offset, 0);
        assert_eq!(out[1].line.as_deref(), Some("aaabbbccc"));
        assert_eq!(out[1].timestamp_ns, Some(1_714_557_600_100_000_000));
        assert_eq!(out[1].commit_offset, text.len() as u64);
    }

    #[test]
    fn docker_chunks_without_newline_join_until_one_ends_the_line() {
        let mut p = FileParser::new(1 << 20, true);
        let text = br#"{"log":"first ","stream":"stdout","time":"2024-05-01T10:00:00Z"}
{"log":"second\n","stream":"stdout","time":"2024-05-01T10:00:01Z"}
"#;
        let out = feed(&mut p, text);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].line.as_deref(), Some("first second"));
        assert_eq!(out[0].timestamp_ns, Some(1_714_557_600_000_000_000));
    }

    #[test]
    fn joined_lines_are_capped_at_max_line_size_and_counted() {
        let mut p = FileParser::new(5, true);
        let out = feed(
            &mut p,
            b"2024-05-01T10:00:00Z stdout P abc\n2024-05-01T10:00:00Z stdout F defgh\n",
        );
        assert_eq!(out[0].line.as_deref(), Some("abcde"));
        assert_eq!(p.stats.truncated, 1);

        let mut p = FileParser::new(5, false);
        let out = feed(&mut p, b"0123456789\nok\n");
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].line, None);
        assert_eq!(p.stats.dropped_too_long, 1);
        assert_eq!(out[1].line.as_deref(), Some("ok"));
    }

    #[test]
    fn a_malformed_line_in_a_cri_file_is_kept_and_counted() {
        let mut p = FileParser::new(1 << 20, true);
        let out = feed(
            &mut p,
            b"2024-05-01T10:00:00Z stderr F ok\ngarbage here\n2024-05-01T10:00:01Z stdout F ok2\n",
        );
        assert_eq!(out.len(), 3);
        assert_eq!(out[1].line.as_deref(), Some("garbage here"));
        assert_eq!(out[1].stream, Some(Stream::Stderr));
        assert_eq!(out[1].timestamp_ns, Some(1_714_557_600_000_000_000));
        assert_eq!(p.stats.malformed, 1);
    }

    #[test]
    fn invalid_utf8_is_replaced_and_counted() {
        let mut p = FileParser::new(1 << 20, true);
        let out = feed(&mut p, b"a\xffb\n");
        assert_eq!(out[0].line.as_deref(), Some("a\u{fffd}b"));
        assert_eq!(out[0].timestamp_ns, None);
        assert_eq!(p.stats.invalid_utf8, 1);
    }

    #[test]
    fn flush_emits_partials_left_open_at_end_of_file() {
        let mut p = FileParser::new(1 << 20, true);
        let out = feed(&mut p, b"2024-05-01T10:00:00Z stdout P tail\n");
        assert!(out.is_empty());
        let mut out = Vec::new();
        p.flush(99, &mut out);
        assert_eq!(out[0].line.as_deref(), Some("tail"));
        assert_eq!(out[0].commit_offset, 99);
    }
}
