//! `lode rules check <files>`: offline validation of rule files.
//!
//! Owns reading the files and reporting, promtool-style, every problem the ruler would
//! refuse the file for (strict YAML, structure, templates, LogQL that must be a metric
//! query). It does not own the rules themselves (`rulefmt`) or the command line
//! (`main.rs` calls [`check_files`] and prints the result).

use std::fmt;
use std::path::PathBuf;

use super::rulefmt::{parse_file, RuleFormatError};

/// What the checked files hold when all are valid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSummary {
    pub files: usize,
    pub groups: usize,
    pub rules: usize,
}

impl fmt::Display for CheckSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SUCCESS: {} rules found in {} groups of {} files",
            self.rules, self.groups, self.files
        )
    }
}

/// Every problem found, one line each, naming file, group, rule and cause.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct CheckFailure {
    pub problems: Vec<String>,
    /// Rules in the files that were valid, for the summary line.
    pub valid: CheckSummary,
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "FAILED:")?;
        for p in &self.problems {
            writeln!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Checks each file; the process should exit 0 on `Ok` and 1 on `Err`, printing either.
pub fn check_files(paths: &[PathBuf]) -> Result<CheckSummary, CheckFailure> {
    let mut valid = CheckSummary {
        files: 0,
        groups: 0,
        rules: 0,
    };
    let mut problems = Vec::new();
    for path in paths {
        let name = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                problems.push(format!("{name}: cannot read rule file: {e}"));
                continue;
            }
        };
        match parse_file(&name, &text) {
            Ok(file) => {
                valid.files += 1;
                valid.groups += file.groups.len();
                valid.rules += file.groups.iter().map(|g| g.rules.len()).sum::<usize>();
            }
            Err(RuleFormatError::Invalid(list)) => {
                problems.extend(list.iter().map(ToString::to_string))
            }
            Err(e) => problems.push(e.to_string()),
        }
    }
    if problems.is_empty() {
        Ok(valid)
    } else {
        Err(CheckFailure { problems, valid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_files_are_summarised() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.yaml");
        std::fs::write(
            &path,
            r#"
groups:
  - name: api
    rules:
      - alert: HighErrorRate
        expr: sum by (app) (rate({app="api"} |= "error" [5m])) > 1
        for: 5m
        annotations: {summary: "{{ $labels.app }} at {{ $value }}"}
      - record: app:lines:rate5m
        expr: sum by (app) (rate({app="api"}[5m]))
"#,
        )
        .unwrap();
        let summary = check_files(&[path]).unwrap();
        assert_eq!(summary.rules, 2);
        assert_eq!(
            summary.to_string(),
            "SUCCESS: 2 rules found in 1 groups of 1 files"
        );
    }

    #[test]
    fn every_problem_is_reported_with_file_group_and_rule() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.yaml");
        std::fs::write(
            &bad,
            r#"
groups:
  - name: g
    rules:
      - alert: LogQuery
        expr: '{app="api"} |= "error"'
      - record: "bad name"
        expr: sum(rate({app="api"}[5m]))
        for: 5m
      - alert: Broken
        expr: sum(rate({app="api"}[5m]
"#,
        )
        .unwrap();
        let missing = dir.path().join("missing.yaml");
        let strict = dir.path().join("strict.yaml");
        std::fs::write(&strict, "name: g\nrules: []\n").unwrap();
        let failure = check_files(&[bad, missing, strict]).unwrap_err();
        let text = failure.to_string();
        assert!(text.starts_with("FAILED:\n"), "{text}");
        assert!(
            text.contains(r#"bad.yaml: group "g", rule 1 "LogQuery": invalid expr"#),
            "{text}"
        );
        assert!(text.contains("this is a log query"), "{text}");
        assert!(
            text.contains(r#"rule 2 "bad name": invalid recording rule name"#),
            "{text}"
        );
        assert!(
            text.contains("`for` is only allowed on alerting rules"),
            "{text}"
        );
        assert!(text.contains(r#"rule 3 "Broken": invalid expr"#), "{text}");
        assert!(text.contains("parse error at line 1"), "{text}");
        assert!(
            text.contains("missing.yaml: cannot read rule file"),
            "{text}"
        );
        assert!(text.contains("strict.yaml: invalid rule YAML"), "{text}");
        assert!(text.contains("starts with `groups:`"), "{text}");
    }
}
