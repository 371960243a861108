//! The deployment files users apply as they are: every YAML under `deploy/` and
//! `docker-compose.yml` parses, the compose services mount files that exist and reach
//! each other on the ports they serve, the shipper configs they carry are valid shipper
//! configs, and the Kubernetes manifests pass `kubernetes-validate --strict`.

// Test helpers fail the test on any unexpected error, which is what unwrap does.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use lode_shipper::config::ShipperConfig;
use serde_yaml::Value;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn files_under(dir: &Path, exts: &[&str], out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files_under(&p, exts, out);
        } else if p
            .extension()
            .and_then(|x| x.to_str())
            .is_some_and(|x| exts.contains(&x))
        {
            out.push(p);
        }
    }
}

/// Every document of a (multi-document) YAML file.
fn documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

use serde::Deserialize;

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    let mut cur = v;
    for k in path {
        cur = cur.get(*k)?;
    }
    cur.as_str()
}

fn shipper_config_from(text: &str, origin: &str) -> ShipperConfig {
    let cfg: ShipperConfig = serde_yaml::from_str(text).unwrap_or_else(|e| panic!("{origin}: {e}"));
    cfg.validate().unwrap_or_else(|e| panic!("{origin}: {e}"));
    cfg
}

#[test]
fn every_yaml_and_json_file_under_deploy_parses() {
    let mut files = Vec::new();
    files_under(&root().join("deploy"), &["yaml", "yml", "json"], &mut files);
    files.push(root().join("docker-compose.yml"));
    assert!(files.len() >= 10, "deploy files found: {files:?}");
    for f in &files {
        if f.extension().is_some_and(|x| x == "json") {
            let text = std::fs::read_to_string(f).unwrap();
            serde_json::from_str::<serde_json::Value>(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        } else {
            assert!(!documents(f).is_empty(), "{} is empty", f.display());
        }
    }
}

#[test]
fn compose_services_mount_existing_files_and_reach_each_other() {
    let root = root();
    let compose = documents(&root.join("docker-compose.yml")).remove(0);
    let services = compose
        .get("services")
        .and_then(Value::as_mapping)
        .expect("services");
    let names: Vec<&str> = services.keys().filter_map(Value::as_str).collect();
    for want in ["lode", "shipper", "grafana", "prometheus", "alertmanager"] {
        assert!(names.contains(&want), "service {want} missing: {names:?}");
    }
    let named_volumes: Vec<&str> = compose
        .get("volumes")
        .and_then(Value::as_mapping)
        .map(|m| m.keys().filter_map(Value::as_str).collect())
        .unwrap_or_default();

    // Host paths mounted into each service, keyed by the container path.
    let mut mounts: BTreeMap<(&str, String), PathBuf> = BTreeMap::new();
    let mut published: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, svc) in services {
        let name = name.as_str().unwrap();
        assert!(
            svc.get("image").is_some() || svc.get("build").is_some(),
            "{name}: no image"
        );
        for v in svc
            .get("volumes")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let spec = v.as_str().expect("short volume syntax");
            let mut parts = spec.split(':');
            let (src, dst) = (parts.next().unwrap(), parts.next().unwrap());
            if let Some(rel) = src.strip_prefix("./") {
                let p = root.join(rel);
                assert!(p.exists(), "{name} mounts {src}, which does not exist");
                mounts.insert((name, dst.to_string()), p);
            } else if !src.starts_with('/') {
                assert!(
                    named_volumes.contains(&src),
                    "{name}: volume {src} not declared"
                );
            }
        }
        for p in svc
            .get("ports")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let container_port = p.as_str().unwrap().rsplit(':').next().unwrap().to_string();
            published.entry(name).or_default().push(container_port);
        }
    }
    assert_eq!(published["lode"], ["3100"]);
    assert_eq!(published["grafana"], ["3000"]);

    // The shipper reads the Docker host's logs with a valid config pushing to `lode`.
    let shipper_cfg = &mounts[&("shipper", "/etc/lode-shipper/shipper.yaml".to_string())];
    let cfg = shipper_config_from(
        &std::fs::read_to_string(shipper_cfg).unwrap(),
        "deploy/compose/shipper.yaml",
    );
    assert_eq!(cfg.client.url, "http://lode:3100/loki/api/v1/push");
    assert_eq!(cfg.server.http_listen_port, 3101);
    assert!(cfg
        .discovery
        .globs
        .iter()
        .all(|g| g.starts_with("/var/lib/docker/containers/")));
    let shipper = services.get("shipper").unwrap();
    let shipper_volumes: Vec<&str> = shipper
        .get("volumes")
        .and_then(Value::as_sequence)
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(shipper_volumes.contains(&"/var/lib/docker/containers:/var/lib/docker/containers:ro"));

    // Grafana's provisioned Loki data source points at the lode service.
    let provisioning = &mounts[&("grafana", "/etc/grafana/provisioning".to_string())];
    let ds = documents(&provisioning.join("datasources/lode.yaml")).remove(0);
    let loki = ds
        .get("datasources")
        .and_then(Value::as_sequence)
        .unwrap()
        .iter()
        .find(|d| str_at(d, &["type"]) == Some("loki"))
        .expect("a loki data source");
    assert_eq!(str_at(loki, &["url"]), Some("http://lode:3100"));
    let providers = documents(&provisioning.join("dashboards/lode.yaml")).remove(0);
    let dash_dir = str_at(&providers["providers"][0], &["options", "path"]).unwrap();
    let dashboards = &mounts[&("grafana", dash_dir.to_string())];
    let mut json = Vec::new();
    files_under(dashboards, &["json"], &mut json);
    assert!(!json.is_empty(), "no dashboard in {}", dashboards.display());

    // Prometheus scrapes both /metrics endpoints on the ports the services listen on.
    let prom = &mounts[&("prometheus", "/etc/prometheus/prometheus.yml".to_string())];
    let prom = documents(prom).remove(0);
    let targets: Vec<&str> = prom["scrape_configs"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|j| j["static_configs"][0]["targets"].as_sequence().unwrap())
        .filter_map(Value::as_str)
        .collect();
    assert!(targets.contains(&"lode:3100"), "{targets:?}");
    assert!(targets.contains(&"shipper:3101"), "{targets:?}");
    assert!(mounts.contains_key(&(
        "alertmanager",
        "/etc/alertmanager/alertmanager.yml".to_string()
    )));
}

#[test]
fn the_daemonset_carries_a_valid_shipper_config_and_mounts_logs_read_only() {
    let docs = documents(&root().join("deploy/kubernetes/shipper.yaml"));
    let cm = docs
        .iter()
        .find(|d| str_at(d, &["kind"]) == Some("ConfigMap"))
        .expect("configmap");
    let cfg = shipper_config_from(
        str_at(cm, &["data", "shipper.yaml"]).unwrap(),
        "deploy/kubernetes/shipper.yaml ConfigMap",
    );
    assert_eq!(cfg.client.url, "http://lode.lode.svc:3100/loki/api/v1/push");
    let ds = docs
        .iter()
        .find(|d| str_at(d, &["kind"]) == Some("DaemonSet"))
        .expect("daemonset");
    let pod = &ds["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let mounts = container["volumeMounts"].as_sequence().unwrap();
    for path in ["/var/log/pods", "/var/lib/docker/containers"] {
        let m = mounts
            .iter()
            .find(|m| str_at(m, &["mountPath"]) == Some(path))
            .unwrap_or_else(|| panic!("{path} not mounted"));
        assert_eq!(
            m["readOnly"].as_bool(),
            Some(true),
            "{path} must be read-only"
        );
    }
    // Positions live on a hostPath, where the config says.
    let state = mounts
        .iter()
        .find(|m| {
            cfg.positions
                .filename
                .starts_with(str_at(m, &["mountPath"]).unwrap())
        })
        .expect("positions directory mounted");
    let vol = pod["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|v| v["name"] == state["name"])
        .unwrap();
    assert!(
        vol.get("hostPath").is_some(),
        "positions must survive pod recreation"
    );
    let env = container["env"].as_sequence().unwrap();
    assert!(env.iter().any(|e| str_at(e, &["name"]) == Some("NODE_NAME")
        && str_at(e, &["valueFrom", "fieldRef", "fieldPath"]) == Some("spec.nodeName")));
}

#[test]
fn kubernetes_manifests_pass_kubernetes_validate() {
    let mut files = Vec::new();
    files_under(
        &root().join("deploy/kubernetes"),
        &["yaml", "yml"],
        &mut files,
    );
    files.sort();
    assert!(!files.is_empty());
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .args(&files)
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => {
            panic!("cannot run python3 ({e}); run scripts/test.sh to install kubernetes-validate")
        }
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "kubernetes-validate is not installed ({}); run scripts/test.sh, which installs it",
        stderr.trim()
    );
    assert!(
        out.status.success(),
        "kubernetes-validate rejected the manifests:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        stderr
    );
}
