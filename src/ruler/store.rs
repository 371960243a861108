//! Rule storage: a directory per tenant, one YAML file per namespace.
//!
//! ```text
//! <storage.local.directory>/
//!   <tenant>/            one directory per tenant (`fake` when auth is off)
//!     <namespace>        a rule file; the namespace is the file name (`api.yaml`)
//! ```
//!
//! Owns listing, reading and (unlike Loki's read-only local store) writing groups, so
//! Grafana can edit rules. Writes replace a file atomically (temp file + rename) and
//! re-validate the whole namespace. Hidden files and subdirectories are skipped. All
//! methods block on the filesystem: call them from `spawn_blocking`. It does not own
//! evaluation or deciding when to reload (`manager`).

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::rulefmt::{parse_file, to_yaml, validate_groups, RuleFile, RuleFormatError, RuleGroup};
use crate::TenantId;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("rule storage i/o on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Format(#[from] RuleFormatError),
    #[error("invalid {what} {name:?}: must be non-empty, not start with '.', and contain no '/' or '\\'")]
    InvalidName { what: &'static str, name: String },
    #[error("group namespace does not exist")]
    NamespaceNotFound,
    #[error("group does not exist")]
    GroupNotFound,
    #[error("per-user rule groups limit (limit: {limit} actual: {actual}) exceeded (ruler_max_rule_groups_per_tenant)")]
    TooManyGroups { limit: usize, actual: usize },
    #[error("per-user rules per rule group limit (limit: {limit} actual: {actual}) exceeded (ruler_max_rules_per_rule_group)")]
    TooManyRules { limit: usize, actual: usize },
    #[error("cannot serialize rule group: {0}")]
    Serialize(String),
}

/// Limits the config API enforces on writes; 0 = unlimited.
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreLimits {
    pub max_rule_groups_per_tenant: usize,
    pub max_rules_per_rule_group: usize,
}

/// One tenant's namespaces as loaded: each file either parsed or with its error.
#[derive(Debug, Default)]
pub struct TenantRules {
    pub namespaces: BTreeMap<String, Result<RuleFile, RuleFormatError>>,
}

/// The local-directory rule store.
#[derive(Clone, Debug)]
pub struct RuleStore {
    dir: PathBuf,
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Refuses names that would escape the tenant directory or hide the file.
pub fn check_name(what: &'static str, name: &str) -> Result<(), StoreError> {
    if name.is_empty()
        || name.starts_with('.')
        || name.contains('/')
        || name.contains('\\')
        || name.contains('\0')
    {
        return Err(StoreError::InvalidName {
            what,
            name: name.to_string(),
        });
    }
    Ok(())
}

impl RuleStore {
    pub fn new(dir: impl Into<PathBuf>) -> RuleStore {
        RuleStore { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn tenant_dir(&self, tenant: &TenantId) -> PathBuf {
        self.dir.join(tenant.as_str())
    }

    fn namespace_path(&self, tenant: &TenantId, namespace: &str) -> Result<PathBuf, StoreError> {
        check_name("namespace", namespace)?;
        Ok(self.tenant_dir(tenant).join(namespace))
    }

    /// Tenants with a directory (symlinks followed); names that are not valid tenant
    /// ids are skipped with a warning.
    pub fn tenants(&self) -> Result<Vec<TenantId>, StoreError> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&self.dir)(e)),
        };
        let mut out = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&self.dir))?;
            let path = entry.path();
            if !path.is_dir() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            match TenantId::new(&name) {
                Ok(t) => out.push(t),
                Err(e) => tracing::warn!(path = %path.display(), "skipping rules directory: {e}"),
            }
        }
        out.sort();
        Ok(out)
    }

    /// Reads every rule file of the tenant, keeping each file's error separately so one
    /// broken file does not hide the others.
    pub fn load_tenant(&self, tenant: &TenantId) -> Result<TenantRules, StoreError> {
        let dir = self.tenant_dir(tenant);
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(TenantRules::default()),
            Err(e) => return Err(io_err(&dir)(e)),
        };
        let mut rules = TenantRules::default();
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') || !path.is_file() {
                continue;
            }
            let text = fs::read_to_string(&path).map_err(io_err(&path))?;
            let parsed = parse_file(&path.display().to_string(), &text);
            rules.namespaces.insert(name, parsed);
        }
        Ok(rules)
    }

    /// Valid groups by namespace (invalid files are left out: they are reported by the
    /// loader and the metrics, and the API must still list the rest).
    pub fn list(&self, tenant: &TenantId) -> Result<BTreeMap<String, Vec<RuleGroup>>, StoreError> {
        Ok(self
            .load_tenant(tenant)?
            .namespaces
            .into_iter()
            .filter_map(|(ns, file)| file.ok().map(|f| (ns, f.groups)))
            .filter(|(_, groups)| !groups.is_empty())
            .collect())
    }

    fn read_namespace(
        &self,
        tenant: &TenantId,
        namespace: &str,
    ) -> Result<Option<RuleFile>, StoreError> {
        let path = self.namespace_path(tenant, namespace)?;
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(parse_file(&path.display().to_string(), &text)?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    pub fn get_namespace(
        &self,
        tenant: &TenantId,
        namespace: &str,
    ) -> Result<Vec<RuleGroup>, StoreError> {
        match self.read_namespace(tenant, namespace)? {
            Some(file) if !file.groups.is_empty() => Ok(file.groups),
            _ => Err(StoreError::NamespaceNotFound),
        }
    }

    pub fn get_group(
        &self,
        tenant: &TenantId,
        namespace: &str,
        group: &str,
    ) -> Result<RuleGroup, StoreError> {
        check_name("group", group)?;
        self.read_namespace(tenant, namespace)?
            .and_then(|f| f.groups.into_iter().find(|g| g.name == group))
            .ok_or(StoreError::GroupNotFound)
    }

    /// Creates or replaces the group with `group.name` in the namespace.
    pub fn set_group(
        &self,
        tenant: &TenantId,
        namespace: &str,
        group: RuleGroup,
        limits: StoreLimits,
    ) -> Result<(), StoreError> {
        check_name("group", &group.name)?;
        if limits.max_rules_per_rule_group > 0
            && group.rules.len() > limits.max_rules_per_rule_group
        {
            return Err(StoreError::TooManyRules {
                limit: limits.max_rules_per_rule_group,
                actual: group.rules.len(),
            });
        }
        let mut file = self.read_namespace(tenant, namespace)?.unwrap_or_default();
        match file.groups.iter_mut().find(|g| g.name == group.name) {
            Some(existing) => *existing = group,
            None => {
                if limits.max_rule_groups_per_tenant > 0 {
                    let total: usize = self.list(tenant)?.values().map(Vec::len).sum::<usize>() + 1;
                    if total > limits.max_rule_groups_per_tenant {
                        return Err(StoreError::TooManyGroups {
                            limit: limits.max_rule_groups_per_tenant,
                            actual: total,
                        });
                    }
                }
                file.groups.push(group);
            }
        }
        let problems = validate_groups(namespace, &file.groups);
        if !problems.is_empty() {
            return Err(RuleFormatError::Invalid(problems).into());
        }
        self.write_namespace(tenant, namespace, &file)
    }

    pub fn delete_group(
        &self,
        tenant: &TenantId,
        namespace: &str,
        group: &str,
    ) -> Result<(), StoreError> {
        check_name("group", group)?;
        let mut file = self
            .read_namespace(tenant, namespace)?
            .ok_or(StoreError::GroupNotFound)?;
        let before = file.groups.len();
        file.groups.retain(|g| g.name != group);
        if file.groups.len() == before {
            return Err(StoreError::GroupNotFound);
        }
        if file.groups.is_empty() {
            let path = self.namespace_path(tenant, namespace)?;
            return fs::remove_file(&path).map_err(io_err(&path));
        }
        self.write_namespace(tenant, namespace, &file)
    }

    pub fn delete_namespace(&self, tenant: &TenantId, namespace: &str) -> Result<(), StoreError> {
        let path = self.namespace_path(tenant, namespace)?;
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::NamespaceNotFound),
            Err(e) => Err(io_err(&path)(e)),
        }
    }

    fn write_namespace(
        &self,
        tenant: &TenantId,
        namespace: &str,
        file: &RuleFile,
    ) -> Result<(), StoreError> {
        let path = self.namespace_path(tenant, namespace)?;
        let dir = self.tenant_dir(tenant);
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let text = to_yaml(file).map_err(|e| StoreError::Serialize(e.to_string()))?;
        // A hidden temp name: the loader skips dotfiles, so a half-written file is never read.
        let tmp = dir.join(format!(".{namespace}.tmp"));
        fs::write(&tmp, text).map_err(io_err(&tmp))?;
        fs::rename(&tmp, &path).map_err(io_err(&path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ruler::rulefmt::RuleDesc;

    fn group(name: &str) -> RuleGroup {
        RuleGroup {
            name: name.into(),
            rules: vec![RuleDesc {
                record: Some("app:lines:rate1m".into()),
                expr: "sum by (app) (rate({app=\"api\"}[1m]))".into(),
                ..RuleDesc::default()
            }],
            ..RuleGroup::default()
        }
    }

    #[test]
    fn groups_are_written_listed_replaced_and_deleted_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let store = RuleStore::new(dir.path());
        let a = TenantId::new("team-a").unwrap();
        let b = TenantId::new("team-b").unwrap();
        store
            .set_group(&a, "api.yaml", group("g1"), StoreLimits::default())
            .unwrap();
        store
            .set_group(&a, "api.yaml", group("g2"), StoreLimits::default())
            .unwrap();
        let mut changed = group("g1");
        changed.limit = 5;
        store
            .set_group(&a, "api.yaml", changed, StoreLimits::default())
            .unwrap();

        let listed = store.list(&a).unwrap();
        assert_eq!(listed["api.yaml"].len(), 2);
        assert_eq!(listed["api.yaml"][0].limit, 5);
        assert!(store.list(&b).unwrap().is_empty(), "tenants are isolated");
        assert_eq!(store.tenants().unwrap(), vec![a.clone()]);
        assert!(matches!(
            store.get_group(&b, "api.yaml", "g1"),
            Err(StoreError::GroupNotFound)
        ));

        store.delete_group(&a, "api.yaml", "g1").unwrap();
        assert!(matches!(
            store.get_group(&a, "api.yaml", "g1"),
            Err(StoreError::GroupNotFound)
        ));
        store.delete_group(&a, "api.yaml", "g2").unwrap();
        assert!(
            !dir.path().join("team-a/api.yaml").exists(),
            "empty namespace file removed"
        );
        assert!(matches!(
            store.delete_namespace(&a, "api.yaml"),
            Err(StoreError::NamespaceNotFound)
        ));
    }

    #[test]
    fn path_tricks_in_names_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = RuleStore::new(dir.path());
        let t = TenantId::default_tenant();
        for ns in ["..", "../x", "a/b", ".hidden", ""] {
            assert!(
                matches!(
                    store.set_group(&t, ns, group("g"), StoreLimits::default()),
                    Err(StoreError::InvalidName { .. })
                ),
                "{ns:?}"
            );
        }
    }

    #[test]
    fn limits_on_groups_and_rules_are_enforced() {
        let dir = tempfile::tempdir().unwrap();
        let store = RuleStore::new(dir.path());
        let t = TenantId::default_tenant();
        let limits = StoreLimits {
            max_rule_groups_per_tenant: 1,
            max_rules_per_rule_group: 1,
        };
        store.set_group(&t, "a", group("g1"), limits).unwrap();
        let err = store.set_group(&t, "b", group("g2"), limits).unwrap_err();
        assert!(err.to_string().contains("limit: 1 actual: 2"), "{err}");
        let mut big = group("g1");
        big.rules.push(big.rules[0].clone());
        let err = store.set_group(&t, "a", big, limits).unwrap_err();
        assert!(matches!(err, StoreError::TooManyRules { .. }), "{err}");
    }

    #[test]
    fn one_broken_file_does_not_hide_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = RuleStore::new(dir.path());
        let t = TenantId::default_tenant();
        store
            .set_group(&t, "good.yaml", group("g"), StoreLimits::default())
            .unwrap();
        fs::write(
            dir.path().join("fake/bad.yaml"),
            "groups: [{name: x, rules: [{alert: A}]}]",
        )
        .unwrap();
        fs::write(dir.path().join("fake/.swap"), "junk").unwrap();
        let loaded = store.load_tenant(&t).unwrap();
        assert_eq!(loaded.namespaces.len(), 2);
        assert!(loaded.namespaces["good.yaml"].is_ok());
        let err = loaded.namespaces["bad.yaml"]
            .as_ref()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.yaml") && err.contains("`expr` must not be empty"),
            "{err}"
        );
        assert_eq!(store.list(&t).unwrap().len(), 1);
    }
}
