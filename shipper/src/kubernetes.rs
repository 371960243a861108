//! Optional pod-label enrichment from the Kubernetes API (`kubernetes.enrich_pod_labels`).
//!
//! Owns the background task that LISTs the pods of this node only
//! (`GET /api/v1/pods?fieldSelector=spec.nodeName=<node>`) every `refresh_interval`, with
//! the service-account token re-read on each refresh (projected tokens rotate) and the
//! cluster CA; the parsing of the pod list; the selection and sanitising of pod labels
//! into Loki label names (`app.kubernetes.io/name` → `app_kubernetes_io_name`, as
//! Promtail's `__meta_kubernetes_pod_label_*`); and the shared map pod → labels that the
//! reader thread looks up ([`PodLabels`]).
//!
//! Failures never block shipping: an API error is logged once per failure streak, counted
//! in `lode_shipper_kubernetes_errors_total`, and the last good map is kept. Streams of a
//! pod not (yet) in the map ship with path labels only, and pick up the pod's labels after
//! the next successful refresh. It does not own merging labels into streams (`pipeline`)
//! nor watching (it polls: one LIST per node per interval, no watch connection).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::Context;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::KubernetesConfig;
use crate::metrics::Metrics;
use crate::pipeline::sanitize_label_name;

/// The pod a log file belongs to, from its `/var/log/pods/<ns>_<name>_<uid>/` directory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// Copied labels of one pod, sanitised, sorted by name.
pub type Labels = Arc<[(String, String)]>;

/// The pods of this node as last listed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodMap {
    /// By pod UID, and by the `kubernetes.io/config.mirror` annotation of mirror pods
    /// (static pods' log directories carry that hash, not the mirror pod's UID).
    by_uid: HashMap<String, Labels>,
    /// By (namespace, name), used when the UID is not known.
    by_name: HashMap<(String, String), Labels>,
}

impl PodMap {
    /// Number of pods listed.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// The labels of `pod`: by UID first, then by namespace and name.
    pub fn get(&self, pod: &PodKey) -> Option<Labels> {
        self.by_uid
            .get(&pod.uid)
            .or_else(|| self.by_name.get(&(pod.namespace.clone(), pod.name.clone())))
            .cloned()
    }
}

/// The shared, refreshed map; `generation` changes whenever its content does, so the
/// reader only recomputes stream labels after a change.
#[derive(Debug, Default)]
pub struct PodLabels {
    generation: AtomicU64,
    map: RwLock<PodMap>,
}

impl PodLabels {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The labels of `pod`, if it was in the last successful list.
    pub fn get(&self, pod: &PodKey) -> Option<Labels> {
        self.map.read().ok().and_then(|m| m.get(pod))
    }

    /// Replaces the map; bumps the generation only when something changed.
    pub fn replace(&self, new: PodMap) {
        let Ok(mut m) = self.map.write() else {
            return;
        };
        if *m != new {
            *m = new;
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Which pod labels are copied and under what names.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Raw pod label keys to copy; empty copies all.
    pub only: Vec<String>,
    /// Prepended before sanitising.
    pub prefix: String,
}

impl Selection {
    /// The copied labels, sanitised to Loki label names; empty values are skipped, and
    /// when two keys sanitise to the same name the first in key order wins.
    pub fn select(&self, labels: &BTreeMap<String, String>) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (k, v) in labels {
            if v.is_empty() || (!self.only.is_empty() && !self.only.iter().any(|o| o == k)) {
                continue;
            }
            let name = sanitize_label_name(&format!("{}{k}", self.prefix));
            if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, v.clone()));
            }
        }
        out.sort();
        out
    }
}

#[derive(Deserialize)]
struct PodList {
    #[serde(default)]
    items: Option<Vec<Pod>>,
}

#[derive(Deserialize)]
struct Pod {
    #[serde(default)]
    metadata: Option<ObjectMeta>,
}

#[derive(Deserialize)]
struct ObjectMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    uid: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    annotations: Option<BTreeMap<String, String>>,
}

/// Parses a `v1.PodList` JSON body into the map, keeping only the selected labels.
/// Items without a name are skipped.
pub fn parse_pod_list(body: &[u8], select: &Selection) -> Result<PodMap, serde_json::Error> {
    let list: PodList = serde_json::from_slice(body)?;
    let mut map = PodMap::default();
    for meta in list
        .items
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.metadata)
    {
        let Some(name) = meta.name.filter(|n| !n.is_empty()) else {
            continue;
        };
        let labels: Labels = select.select(&meta.labels.unwrap_or_default()).into();
        if let Some(uid) = meta.uid.filter(|u| !u.is_empty()) {
            map.by_uid.insert(uid, labels.clone());
        }
        if let Some(hash) = meta
            .annotations
            .as_ref()
            .and_then(|a| a.get("kubernetes.io/config.mirror"))
            .filter(|h| !h.is_empty())
        {
            map.by_uid.insert(hash.clone(), labels.clone());
        }
        map.by_name
            .insert((meta.namespace.unwrap_or_default(), name), labels);
    }
    Ok(map)
}

/// The API base URL: `kubernetes.api_url`, else the in-cluster service from
/// `KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`, else `https://kubernetes.default.svc`.
pub fn api_base(cfg: &KubernetesConfig) -> String {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let base = match (&cfg.api_url, env("KUBERNETES_SERVICE_HOST")) {
        (Some(u), _) => u.clone(),
        (None, Some(host)) => {
            let port = env("KUBERNETES_SERVICE_PORT").unwrap_or_else(|| "443".into());
            if host.contains(':') {
                format!("https://[{host}]:{port}")
            } else {
                format!("https://{host}:{port}")
            }
        }
        (None, None) => "https://kubernetes.default.svc".into(),
    };
    base.trim_end_matches('/').to_string()
}

/// The pod-list URL of `node`'s pods.
pub fn pods_url(base: &str, node: &str) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(&format!("{base}/api/v1/pods"))
        .with_context(|| format!("invalid kubernetes.api_url {base:?}"))?;
    url.query_pairs_mut()
        .append_pair("fieldSelector", &format!("spec.nodeName={node}"));
    Ok(url)
}

/// The background refresher.
pub struct Refresher {
    cfg: KubernetesConfig,
    base: String,
    node: String,
    select: Selection,
    store: Arc<PodLabels>,
    metrics: Arc<Metrics>,
    client: Option<reqwest::Client>,
}

impl Refresher {
    pub fn new(
        cfg: KubernetesConfig,
        node: String,
        store: Arc<PodLabels>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Refresher {
            base: api_base(&cfg),
            select: Selection {
                only: cfg.labels.clone(),
                prefix: cfg.label_prefix.clone(),
            },
            cfg,
            node,
            store,
            metrics,
            client: None,
        }
    }

    /// Refreshes every `refresh_interval` until `stop` changes.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        info!(api = %self.base, node = %self.node, interval = %humantime::format_duration(self.cfg.refresh_interval), "pod-label enrichment on");
        let mut failing = false;
        loop {
            // Shutdown does not wait for a slow API (up to `timeout`).
            let result = tokio::select! {
                r = self.refresh() => r,
                _ = stop.changed() => return,
            };
            match result {
                Ok(pods) => {
                    if failing {
                        info!(pods, "kubernetes API reachable again; pod labels refreshed");
                    } else {
                        debug!(pods, "pod labels refreshed");
                    }
                    failing = false;
                    self.metrics.kubernetes_pods.set(pods as i64);
                }
                Err(e) => {
                    self.metrics.kubernetes_errors.inc();
                    if failing {
                        debug!(error = format!("{e:#}"), "pod list failed again");
                    } else {
                        warn!(error = format!("{e:#}"), "pod list from the kubernetes API failed; keeping the last pod labels and retrying every refresh_interval (logged once until it recovers)");
                    }
                    failing = true;
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.cfg.refresh_interval) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// One LIST; returns the number of pods.
    async fn refresh(&mut self) -> anyhow::Result<usize> {
        let client = match &self.client {
            Some(c) => c.clone(),
            None => {
                let c = self.build_client()?;
                self.client = Some(c.clone());
                c
            }
        };
        let url = pods_url(&self.base, &self.node)?;
        let mut req = client.get(url);
        if let Some(path) = &self.cfg.token_file {
            let token = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read kubernetes.token_file {}", path.display()))?;
            req = req.bearer_auth(token.trim());
        }
        let resp = req.send().await.context("pod list request")?;
        let status = resp.status();
        let body = resp.bytes().await.context("pod list body")?;
        if !status.is_success() {
            let text = String::from_utf8_lossy(body.get(..300).unwrap_or(&body));
            anyhow::bail!("pod list answered {status}: {}", text.trim());
        }
        let map = parse_pod_list(&body, &self.select).context("invalid pod list JSON")?;
        let n = map.len();
        self.store.replace(map);
        Ok(n)
    }

    fn build_client(&self) -> anyhow::Result<reqwest::Client> {
        let mut b = reqwest::Client::builder().timeout(self.cfg.timeout);
        if let Some(path) = self
            .cfg
            .ca_file
            .as_ref()
            .filter(|_| self.base.starts_with("https:"))
        {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read kubernetes.ca_file {}", path.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("invalid PEM in kubernetes.ca_file {}", path.display()))?;
            b = b.add_root_certificate(cert);
        }
        b.build().context("cannot build the kubernetes API client")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn pod_labels_are_sanitised_like_promtail_and_filtered() {
        let l = labels(&[
            ("app.kubernetes.io/name", "web"),
            ("pod-template-hash", "7d9f8c6b5d"),
            ("9lives", "cat"),
            ("empty", ""),
        ]);
        let all = Selection::default().select(&l);
        assert_eq!(
            all,
            vec![
                ("_9lives".to_string(), "cat".to_string()),
                ("app_kubernetes_io_name".to_string(), "web".to_string()),
                ("pod_template_hash".to_string(), "7d9f8c6b5d".to_string()),
            ]
        );
        let some = Selection {
            only: vec!["app.kubernetes.io/name".into()],
            prefix: "pod_label_".into(),
        }
        .select(&l);
        assert_eq!(
            some,
            vec![(
                "pod_label_app_kubernetes_io_name".to_string(),
                "web".to_string()
            )]
        );
        // Two keys sanitising to the same name: the first in key order wins.
        let clash = Selection::default().select(&labels(&[("a-b", "1"), ("a.b", "2")]));
        assert_eq!(clash, vec![("a_b".to_string(), "1".to_string())]);
    }

    #[test]
    fn pod_list_json_is_parsed_by_uid_mirror_hash_and_name() {
        let body = br#"{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},
          "items":[
            {"metadata":{"name":"web-1","namespace":"shop","uid":"u1",
              "labels":{"app.kubernetes.io/name":"web","tier":"front"}},"spec":{"nodeName":"n1"}},
            {"metadata":{"name":"etcd-n1","namespace":"kube-system","uid":"mirror-uid",
              "annotations":{"kubernetes.io/config.mirror":"hash1"},"labels":{"component":"etcd"}}},
            {"metadata":{"name":"bare","namespace":"shop","uid":"u3","labels":null}},
            {"metadata":{"namespace":"x"}},
            {}
          ]}"#;
        let map = parse_pod_list(body, &Selection::default()).unwrap();
        assert_eq!(map.len(), 3);
        let key = |ns: &str, name: &str, uid: &str| PodKey {
            namespace: ns.into(),
            name: name.into(),
            uid: uid.into(),
        };
        let web = map.get(&key("shop", "web-1", "u1")).unwrap();
        assert_eq!(
            &*web,
            &[
                ("app_kubernetes_io_name".to_string(), "web".to_string()),
                ("tier".to_string(), "front".to_string())
            ]
        );
        // Static pod: the log directory has the config hash, found through the annotation.
        let etcd = map.get(&key("kube-system", "etcd-n1", "hash1")).unwrap();
        assert_eq!(&*etcd, &[("component".to_string(), "etcd".to_string())]);
        // Unknown UID falls back to namespace/name.
        assert!(map.get(&key("shop", "web-1", "other")).is_some());
        assert!(map.get(&key("shop", "bare", "u3")).unwrap().is_empty());
        assert!(map.get(&key("shop", "gone", "u9")).is_none());

        assert!(parse_pod_list(b"{\"items\":null}", &Selection::default())
            .unwrap()
            .is_empty());
        assert!(parse_pod_list(b"<html>", &Selection::default()).is_err());
    }

    #[test]
    fn the_map_generation_changes_only_with_its_content() {
        let store = PodLabels::default();
        let body = br#"{"items":[{"metadata":{"name":"a","namespace":"n","uid":"u","labels":{"x":"1"}}}]}"#;
        let map = parse_pod_list(body, &Selection::default()).unwrap();
        store.replace(map.clone());
        assert_eq!(store.generation(), 1);
        store.replace(map);
        assert_eq!(store.generation(), 1);
        store.replace(PodMap::default());
        assert_eq!(store.generation(), 2);
    }

    #[test]
    fn the_pods_url_selects_this_node_only() {
        let url = pods_url("https://10.0.0.1:6443", "node-1.example").unwrap();
        assert_eq!(
            url.as_str(),
            "https://10.0.0.1:6443/api/v1/pods?fieldSelector=spec.nodeName%3Dnode-1.example"
        );
        let cfg = KubernetesConfig {
            api_url: Some("http://127.0.0.1:8001/".into()),
            ..KubernetesConfig::default()
        };
        assert_eq!(api_base(&cfg), "http://127.0.0.1:8001");
    }
}
