//! Labels and per-line stages: what stream an entry belongs to, and whether it is shipped.
//!
//! Owns the labels derived from a file's path (Kubernetes pod log layout, Docker's
//! container directory, or any other file), the `node_name` and static labels, relabel
//! rules (drop / keep / rename / labeldrop), the `json` stage that promotes chosen fields
//! of JSON lines to labels, and the `drop` stage. It does not own parsing the runtime
//! envelope (`format`) or sending (`client`).
//!
//! Path labels, from `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<n>.log`:
//! `namespace`, `pod`, `container`, `job` = `<namespace>/<container>`, `pod_uid` (opt-in),
//! and `app` when the pod name ends in a controller suffix that can be stripped: a
//! Deployment's `-<template-hash>-<5 chars>`, a StatefulSet's `-<ordinal>`, or a DaemonSet
//! or Job's `-<5 chars>`. This is a heuristic: a bare pod named `web-abcde` also loses its
//! suffix. From `/var/lib/docker/containers/<id>/<id>-json.log`: `container` (the Docker
//! name from the directory's `config.v2.json`, else the 12-char id), `compose_project` and
//! `compose_service` when Compose labels exist, `job` = `docker/<container>`. Any other
//! file gets `filename` and `job` = `lode-shipper`.
//!
//! With `kubernetes.enrich_pod_labels`, the labels of the file's pod as last listed by
//! [`crate::kubernetes`] are added to its streams before relabelling; every label set
//! above (path, `node_name`, static, `stream`) wins over a pod label of the same name.

use std::path::Path;
use std::sync::{Arc, LazyLock};

use lode_push::LabelSet;
use regex::Regex;

use crate::config::{LabelsConfig, PipelineConfig, RelabelRule};
use crate::format::Stream;
use crate::kubernetes::{PodKey, PodLabels};

/// Why labels could not be built.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid regex {regex:?} in {setting}: {source}")]
    Regex {
        regex: String,
        setting: &'static str,
        source: regex::Error,
    },
}

enum Rule {
    Drop { source: String, re: Regex },
    Keep { source: String, re: Regex },
    Rename { source: String, target: String },
    Labeldrop { re: Regex },
}

/// The compiled label configuration and line stages.
pub struct Pipeline {
    node_name: Option<String>,
    pod_uid: bool,
    filename: bool,
    static_labels: Vec<(String, String)>,
    rules: Vec<Rule>,
    json_labels: Vec<String>,
    drop: Vec<Regex>,
    pods: Option<Arc<PodLabels>>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("rules", &self.rules.len())
            .finish()
    }
}

/// The labels of one stream of a file, or `None` when relabelling dropped it.
pub type StreamLabels = Option<Arc<LabelSet>>;

/// What the line stages decided for one line.
#[derive(Debug, PartialEq, Eq)]
pub enum LineVerdict {
    /// Ship with the file's stream labels.
    Keep,
    /// Ship with these labels (the `json` stage added some).
    Relabelled(LabelSet),
    /// Matched a `drop` regex.
    Dropped,
}

fn anchored(re: &str, setting: &'static str) -> Result<Regex, Error> {
    Regex::new(&format!("^(?:{re})$")).map_err(|source| Error::Regex {
        regex: re.to_string(),
        setting,
        source,
    })
}

impl Pipeline {
    pub fn new(labels: &LabelsConfig, stages: &PipelineConfig) -> Result<Self, Error> {
        let mut rules = Vec::new();
        for r in &labels.relabel {
            rules.push(match r {
                RelabelRule::Drop {
                    source_label,
                    regex,
                } => Rule::Drop {
                    source: source_label.clone(),
                    re: anchored(regex, "labels.relabel")?,
                },
                RelabelRule::Keep {
                    source_label,
                    regex,
                } => Rule::Keep {
                    source: source_label.clone(),
                    re: anchored(regex, "labels.relabel")?,
                },
                RelabelRule::Rename {
                    source_label,
                    target_label,
                } => Rule::Rename {
                    source: source_label.clone(),
                    target: target_label.clone(),
                },
                RelabelRule::Labeldrop { regex } => Rule::Labeldrop {
                    re: anchored(regex, "labels.relabel")?,
                },
            });
        }
        let drop = stages
            .drop
            .iter()
            .map(|r| {
                Regex::new(r).map_err(|source| Error::Regex {
                    regex: r.clone(),
                    setting: "pipeline.drop",
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Pipeline {
            node_name: labels
                .node_name
                .clone()
                .or_else(|| std::env::var("NODE_NAME").ok())
                .filter(|n| !n.is_empty()),
            pod_uid: labels.pod_uid,
            filename: labels.filename,
            static_labels: labels
                .static_labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            rules,
            json_labels: stages.json_labels.clone(),
            drop,
            pods: None,
        })
    }

    /// Enriches streams of Kubernetes pods with the labels in `pods`.
    pub fn with_pod_labels(mut self, pods: Arc<PodLabels>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// The `node_name` label value, if any (also the node whose pods are listed).
    pub fn node_name(&self) -> Option<&str> {
        self.node_name.as_deref()
    }

    /// Changes whenever the pod-label map does; `None` without enrichment.
    pub fn pod_labels_generation(&self) -> Option<u64> {
        self.pods.as_ref().map(|p| p.generation())
    }

    /// The final labels of `stream` of a file of `pod`: like [`Self::stream_labels`],
    /// with the pod's labels added first when enrichment is on and the pod is known.
    pub fn pod_stream_labels(
        &self,
        pod: Option<&PodKey>,
        file_labels: &[(String, String)],
        stream: Option<Stream>,
    ) -> StreamLabels {
        let extra = self
            .pods
            .as_ref()
            .zip(pod)
            .and_then(|(pods, pod)| pods.get(pod));
        self.labels_with(file_labels, extra.as_deref().unwrap_or(&[]), stream)
    }

    /// The labels every stream of `path` shares, before the `stream` label.
    pub fn file_labels(&self, path: &Path) -> Vec<(String, String)> {
        let mut l = path_labels(path, self.pod_uid, self.filename);
        if let Some(n) = &self.node_name {
            l.push(("node_name".into(), n.clone()));
        }
        for (k, v) in &self.static_labels {
            l.retain(|(name, _)| name != k);
            l.push((k.clone(), v.clone()));
        }
        l
    }

    /// The final labels of `stream` of a file with `file_labels`, after relabelling.
    pub fn stream_labels(
        &self,
        file_labels: &[(String, String)],
        stream: Option<Stream>,
    ) -> StreamLabels {
        self.labels_with(file_labels, &[], stream)
    }

    fn labels_with(
        &self,
        file_labels: &[(String, String)],
        pod_labels: &[(String, String)],
        stream: Option<Stream>,
    ) -> StreamLabels {
        let mut l: Vec<(String, String)> = file_labels.to_vec();
        if let Some(s) = stream {
            l.push(("stream".into(), s.as_str().into()));
        }
        for (k, v) in pod_labels {
            if !l.iter().any(|(name, _)| name == k) {
                l.push((k.clone(), v.clone()));
            }
        }
        for rule in &self.rules {
            let value = |name: &str, l: &[(String, String)]| {
                l.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            match rule {
                Rule::Drop { source, re } => {
                    if re.is_match(&value(source, &l)) {
                        return None;
                    }
                }
                Rule::Keep { source, re } => {
                    if !re.is_match(&value(source, &l)) {
                        return None;
                    }
                }
                Rule::Rename { source, target } => {
                    if let Some(pos) = l.iter().position(|(k, _)| k == source) {
                        let (_, v) = l.remove(pos);
                        l.retain(|(k, _)| k != target);
                        l.push((target.clone(), v));
                    }
                }
                Rule::Labeldrop { re } => l.retain(|(k, _)| !re.is_match(k)),
            }
        }
        l.retain(|(_, v)| !v.is_empty());
        LabelSet::from_pairs(l).ok().map(Arc::new)
    }

    /// Runs the per-line stages.
    pub fn line_verdict(&self, labels: &LabelSet, line: &str) -> LineVerdict {
        if self.drop.iter().any(|re| re.is_match(line)) {
            return LineVerdict::Dropped;
        }
        if self.json_labels.is_empty() || !line.trim_start().starts_with('{') {
            return LineVerdict::Keep;
        }
        let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(line)
        else {
            return LineVerdict::Keep;
        };
        let mut extra = Vec::new();
        for field in &self.json_labels {
            let value = match map.get(field) {
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_))) => {
                    v.to_string()
                }
                _ => continue,
            };
            if !value.is_empty() {
                extra.push((sanitize_label_name(field), value));
            }
        }
        if extra.is_empty() {
            return LineVerdict::Keep;
        }
        let mut pairs: Vec<(String, String)> = labels
            .iter()
            .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        pairs.extend(extra);
        match LabelSet::from_pairs(pairs) {
            Ok(l) => LineVerdict::Relabelled(l),
            Err(_) => LineVerdict::Keep,
        }
    }
}

/// Maps any string to a valid label name (`app.kubernetes.io/name` →
/// `app_kubernetes_io_name`).
pub fn sanitize_label_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
        s.insert(0, '_');
    }
    s
}

/// The pod of a `/var/log/pods/<namespace>_<pod>_<uid>/<container>/<file>` path, with
/// the container name.
fn kubernetes_parts(path: &Path) -> Option<(PodKey, &str)> {
    let parts: Vec<&str> = path.iter().filter_map(|c| c.to_str()).collect();
    let n = parts.len();
    let pod_dir = parts.get(n.checked_sub(3)?)?;
    let container = parts.get(n.checked_sub(2)?)?;
    if pod_dir.split('_').count() < 3 {
        return None;
    }
    // Namespaces and pod names are DNS labels (no '_'), the uid has none either, so
    // splitting from the right is exact.
    let mut it = pod_dir.rsplitn(3, '_');
    let uid = it.next().unwrap_or_default();
    let name = it.next().unwrap_or_default();
    let namespace = it.next().unwrap_or_default();
    Some((
        PodKey {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
        },
        container,
    ))
}

/// The pod a file belongs to, for Kubernetes pod log paths.
pub fn pod_of_path(path: &Path) -> Option<PodKey> {
    kubernetes_parts(path).map(|(pod, _)| pod)
}

/// Labels from a file path alone.
pub fn path_labels(path: &Path, pod_uid: bool, filename: bool) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some((pod, container)) = kubernetes_parts(path) {
        let PodKey {
            namespace,
            name,
            uid,
        } = pod;
        out.push(("namespace".into(), namespace.clone()));
        out.push(("pod".into(), name.clone()));
        out.push(("container".into(), container.to_string()));
        out.push(("job".into(), format!("{namespace}/{container}")));
        if let Some(app) = infer_app(&name) {
            out.push(("app".into(), app.to_string()));
        }
        if pod_uid {
            out.push(("pod_uid".into(), uid));
        }
        if filename {
            out.push(("filename".into(), path.display().to_string()));
        }
        return out;
    }
    let docker_id = path
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| {
            f.split("-json.log")
                .next()
                .filter(|_| f.contains("-json.log"))
        })
        .filter(|id| id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit()));
    if let Some(id) = docker_id {
        let meta = path
            .parent()
            .map(|d| d.join("config.v2.json"))
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice::<DockerConfig>(&b).ok());
        let short = id.get(..12).unwrap_or(id).to_string();
        let name = meta
            .as_ref()
            .map(|m| m.name.trim_start_matches('/').to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or(short);
        if let Some(labels) = meta.as_ref().map(|m| &m.config.labels) {
            if let Some(p) = labels.get("com.docker.compose.project") {
                out.push(("compose_project".into(), p.clone()));
            }
            if let Some(s) = labels.get("com.docker.compose.service") {
                out.push(("compose_service".into(), s.clone()));
            }
        }
        out.push(("job".into(), format!("docker/{name}")));
        out.push(("container".into(), name));
        if filename {
            out.push(("filename".into(), path.display().to_string()));
        }
        return out;
    }
    out.push(("filename".into(), path.display().to_string()));
    out.push(("job".into(), "lode-shipper".into()));
    out
}

#[derive(serde::Deserialize)]
struct DockerConfig {
    #[serde(rename = "Name", default)]
    name: String,
    #[serde(rename = "Config", default)]
    config: DockerContainerConfig,
}

#[derive(serde::Deserialize, Default)]
struct DockerContainerConfig {
    #[serde(rename = "Labels", default)]
    labels: std::collections::HashMap<String, String>,
}

/// The workload name behind a pod name, when a controller suffix can be recognised.
pub fn infer_app(pod: &str) -> Option<&str> {
    // Kubernetes' random suffixes use this consonant-and-digit alphabet.
    static DEPLOYMENT: LazyLock<Option<Regex>> = LazyLock::new(|| {
        Regex::new("^(.+)-[bcdfghjklmnpqrstvwxz2456789]{6,10}-[bcdfghjklmnpqrstvwxz2456789]{5}$")
            .ok()
    });
    static ORDINAL: LazyLock<Option<Regex>> = LazyLock::new(|| Regex::new("^(.+)-[0-9]+$").ok());
    static RANDOM5: LazyLock<Option<Regex>> =
        LazyLock::new(|| Regex::new("^(.+)-[bcdfghjklmnpqrstvwxz2456789]{5}$").ok());
    for re in [&DEPLOYMENT, &ORDINAL, &RANDOM5] {
        if let Some(m) = re
            .as_ref()
            .and_then(|re| re.captures(pod))
            .and_then(|c| c.get(1))
        {
            return Some(m.as_str());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(l: &'a [(String, String)], k: &str) -> Option<&'a str> {
        l.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str())
    }

    #[test]
    fn kubernetes_pod_paths_give_namespace_pod_container_job_and_app() {
        let l = path_labels(
            Path::new("/var/log/pods/shop_web-7d9f8b6c5d-x2x7q_0f1e-22aa/nginx/0.log"),
            false,
            false,
        );
        assert_eq!(get(&l, "namespace"), Some("shop"));
        assert_eq!(get(&l, "pod"), Some("web-7d9f8b6c5d-x2x7q"));
        assert_eq!(get(&l, "container"), Some("nginx"));
        assert_eq!(get(&l, "job"), Some("shop/nginx"));
        assert_eq!(get(&l, "app"), Some("web"));
        assert_eq!(get(&l, "pod_uid"), None);
        assert_eq!(get(&l, "filename"), None);

        let l = path_labels(
            Path::new("/var/log/pods/db_pg-0_uid1/pg/3.log.20240501-100000"),
            true,
            false,
        );
        assert_eq!(get(&l, "app"), Some("pg"));
        assert_eq!(get(&l, "pod_uid"), Some("uid1"));
    }

    #[test]
    fn app_is_inferred_only_from_controller_suffixes() {
        assert_eq!(infer_app("web-7d9f8b6c5d-x2x7q"), Some("web"));
        assert_eq!(infer_app("kafka-12"), Some("kafka"));
        assert_eq!(infer_app("fluent-bit-k8s2w"), Some("fluent-bit"));
        assert_eq!(infer_app("standalone"), None);
    }

    #[test]
    fn other_files_get_filename_and_a_job() {
        let l = path_labels(Path::new("/var/log/syslog"), false, false);
        assert_eq!(get(&l, "filename"), Some("/var/log/syslog"));
        assert_eq!(get(&l, "job"), Some("lode-shipper"));
    }

    #[test]
    fn docker_paths_use_the_container_name_from_config_v2_json() {
        let dir = tempfile::tempdir().unwrap();
        let id = "a".repeat(64);
        let cdir = dir.path().join(&id);
        std::fs::create_dir(&cdir).unwrap();
        std::fs::write(
            cdir.join("config.v2.json"),
            r#"{"Name":"/shop-web-1","Config":{"Labels":{"com.docker.compose.service":"web","com.docker.compose.project":"shop"}}}"#,
        )
        .unwrap();
        let l = path_labels(&cdir.join(format!("{id}-json.log")), false, false);
        assert_eq!(get(&l, "container"), Some("shop-web-1"));
        assert_eq!(get(&l, "compose_service"), Some("web"));
        assert_eq!(get(&l, "compose_project"), Some("shop"));
        assert_eq!(get(&l, "job"), Some("docker/shop-web-1"));

        let l = path_labels(
            &dir.path()
                .join(format!("{}/{}-json.log", "b".repeat(64), "b".repeat(64))),
            false,
            false,
        );
        assert_eq!(get(&l, "container"), Some("bbbbbbbbbbbb"));
    }

    fn pipeline(labels: &str, stages: &str) -> Pipeline {
        Pipeline::new(
            &serde_yaml::from_str(labels).unwrap(),
            &serde_yaml::from_str(stages).unwrap(),
        )
        .unwrap()
    }

    #[test]
    fn node_name_static_labels_and_relabel_rules_apply_in_order() {
        let p = pipeline(
            r#"
node_name: n1
static: {cluster: prod}
relabel:
  - {action: drop, source_label: namespace, regex: kube-.*}
  - {action: rename, source_label: container, target_label: ctr}
  - {action: labeldrop, regex: "jo.*"}
"#,
            "{}",
        );
        let fl = p.file_labels(Path::new("/var/log/pods/shop_web-0_u/nginx/0.log"));
        let l = p.stream_labels(&fl, Some(Stream::Stderr)).unwrap();
        assert_eq!(
            l.to_string(),
            r#"{app="web", cluster="prod", ctr="nginx", namespace="shop", node_name="n1", pod="web-0", stream="stderr"}"#
        );
        let fl = p.file_labels(Path::new("/var/log/pods/kube-system_dns-0_u/dns/0.log"));
        assert_eq!(p.stream_labels(&fl, Some(Stream::Stdout)), None);
    }

    #[test]
    fn pod_labels_are_added_before_relabelling_and_path_labels_win() {
        let pods = Arc::new(PodLabels::default());
        pods.replace(
            crate::kubernetes::parse_pod_list(
                br#"{"items":[{"metadata":{"name":"web-0","namespace":"shop","uid":"u",
                  "labels":{"team":"a","namespace":"evil","stream":"x","drop.me":"y"}}}]}"#,
                &crate::kubernetes::Selection::default(),
            )
            .unwrap(),
        );
        let p = pipeline(
            "{node_name: n1, relabel: [{action: labeldrop, regex: drop_me}]}",
            "{}",
        )
        .with_pod_labels(pods);
        let path = Path::new("/var/log/pods/shop_web-0_u/nginx/0.log");
        let fl = p.file_labels(path);
        let pod = pod_of_path(path);
        let l = p
            .pod_stream_labels(pod.as_ref(), &fl, Some(Stream::Stdout))
            .unwrap();
        assert_eq!(
            l.to_string(),
            r#"{app="web", container="nginx", job="shop/nginx", namespace="shop", node_name="n1", pod="web-0", stream="stdout", team="a"}"#
        );
        // Unknown pod: path labels only.
        let other = Path::new("/var/log/pods/shop_db-0_u2/pg/0.log");
        let l = p
            .pod_stream_labels(
                pod_of_path(other).as_ref(),
                &p.file_labels(other),
                Some(Stream::Stdout),
            )
            .unwrap();
        assert_eq!(l.get("team"), None);
        assert_eq!(pod_of_path(Path::new("/var/log/syslog")), None);
    }

    #[test]
    fn keep_rules_drop_streams_that_do_not_match() {
        let p = pipeline(
            "relabel: [{action: keep, source_label: namespace, regex: prod}]",
            "{}",
        );
        let fl = p.file_labels(Path::new("/var/log/pods/dev_a-0_u/c/0.log"));
        assert_eq!(p.stream_labels(&fl, None), None);
        let fl = p.file_labels(Path::new("/var/log/pods/prod_a-0_u/c/0.log"));
        assert!(p.stream_labels(&fl, None).is_some());
    }

    #[test]
    fn json_stage_promotes_chosen_fields_and_drop_stage_drops() {
        let p = pipeline(
            "{}",
            "{json_labels: [level, 'http.status'], drop: ['healthz']}",
        );
        let base = LabelSet::from_pairs([("app", "x")]).unwrap();
        assert_eq!(
            p.line_verdict(&base, r#"{"level":"error","msg":"boom","http.status":500}"#),
            LineVerdict::Relabelled(
                LabelSet::from_pairs([("app", "x"), ("level", "error"), ("http_status", "500")])
                    .unwrap()
            )
        );
        assert_eq!(p.line_verdict(&base, "plain text"), LineVerdict::Keep);
        assert_eq!(p.line_verdict(&base, "{not json"), LineVerdict::Keep);
        assert_eq!(
            p.line_verdict(&base, "GET /healthz 200"),
            LineVerdict::Dropped
        );
    }
}
