//! The `lode serve` configurations shipped in `deploy/` (docker-compose and the
//! Kubernetes ConfigMap) load and validate as `lode serve --config` would load them, so a
//! key typo there cannot reach a user's cluster.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is the failure report

use std::path::PathBuf;

use lode::config::LodeConfig;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn check(name: &str, text: &str) -> LodeConfig {
    let config = LodeConfig::from_yaml(text).unwrap_or_else(|e| panic!("{name}: {e}"));
    config.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    config
}

#[test]
fn the_compose_config_loads_with_the_ruler_reading_the_mounted_rules() {
    let text = std::fs::read_to_string(repo().join("deploy/compose/lode.yaml")).unwrap();
    let config = check("deploy/compose/lode.yaml", &text);
    assert!(config.ruler.enabled, "compose runs the example rules");
    assert_eq!(
        config.ruler.storage.local.directory,
        PathBuf::from("/etc/lode/rules"),
        "docker-compose.yml mounts deploy/rules there"
    );
    let compose = std::fs::read_to_string(repo().join("docker-compose.yml")).unwrap();
    assert!(compose.contains("./deploy/rules:/etc/lode/rules"));
    assert!(compose.contains("./deploy/compose/lode.yaml:/etc/lode/lode.yaml"));
}

#[test]
fn the_kubernetes_configmap_config_loads() {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/lode-server.yaml")).unwrap();
    let mut found = 0;
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc).unwrap();
        if value["kind"] == "ConfigMap" {
            let embedded = value["data"]["lode.yaml"].as_str().expect("data.lode.yaml");
            check("deploy/kubernetes/lode-server.yaml ConfigMap", embedded);
            found += 1;
        }
    }
    assert_eq!(found, 1, "one ConfigMap with lode.yaml");
}
