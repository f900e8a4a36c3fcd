//! The mount table: which path prefixes hold which secrets engine. Kept encrypted in the
//! replicated state at `core/mounts`; `secret/` (KV v2) exists from init.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Storage key of the mount table.
pub const MOUNTS_KEY: &[u8] = crate::keys::MOUNTS;

/// One mounted secrets engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountEntry {
    /// Engine type: `kv` is the only one Coffer serves.
    #[serde(rename = "type")]
    pub kind: String,
    /// Human description.
    pub description: String,
    /// Stable id; storage keys of the mount's data use the mount path, the id is reported.
    pub uuid: String,
    /// Public accessor, `kv_<8 hex>`.
    pub accessor: String,
    /// Engine options; for KV, `version` = `2`.
    pub options: BTreeMap<String, String>,
    /// Tuned default lease TTL in seconds (0: the system's). Coffer's KV issues no leases;
    /// the value is kept so that tools that tune it read back what they set.
    #[serde(default)]
    pub default_lease_ttl: u64,
    /// Tuned maximum lease TTL in seconds (0: the system's); kept as `default_lease_ttl` is.
    #[serde(default)]
    pub max_lease_ttl: u64,
}

/// A `sys/mounts/:path/tune` write: absent fields stay as they are.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountTune {
    /// New description.
    pub description: Option<String>,
    /// New default lease TTL, seconds.
    pub default_lease_ttl: Option<u64>,
    /// New maximum lease TTL, seconds.
    pub max_lease_ttl: Option<u64>,
    /// Options; for KV only `version` = `2`, which Coffer's mounts already are.
    pub options: Option<BTreeMap<String, String>>,
}

impl MountTune {
    /// Applies the tune to `entry`, or says why it cannot be: a KV mount stays version 2,
    /// and the default TTL may not exceed the maximum.
    pub fn apply(&self, entry: &mut MountEntry) -> Result<(), String> {
        if let Some(options) = &self.options {
            for (k, v) in options {
                match (k.as_str(), v.as_str()) {
                    ("version", "2") => {}
                    ("version", other) => {
                        return Err(format!(
                            "KV version {other:?} is not available: Coffer serves KV version 2 only"
                        ))
                    }
                    (other, _) => return Err(format!("unsupported mount option {other:?}")),
                }
            }
        }
        let default = self.default_lease_ttl.unwrap_or(entry.default_lease_ttl);
        let max = self.max_lease_ttl.unwrap_or(entry.max_lease_ttl);
        if max > 0 && default > max {
            return Err("default_lease_ttl may not exceed max_lease_ttl".into());
        }
        if let Some(d) = &self.description {
            entry.description.clone_from(d);
        }
        (entry.default_lease_ttl, entry.max_lease_ttl) = (default, max);
        Ok(())
    }
}

impl MountEntry {
    /// A KV v2 mount.
    pub fn kv2(description: &str) -> Self {
        let uuid = uuid::Uuid::new_v4();
        Self {
            kind: "kv".into(),
            description: description.into(),
            accessor: format!("kv_{}", &uuid.simple().to_string()[..8]),
            uuid: uuid.to_string(),
            options: BTreeMap::from([("version".to_string(), "2".to_string())]),
            default_lease_ttl: 0,
            max_lease_ttl: 0,
        }
    }
}

/// Mount path (with trailing `/`) -> entry.
pub type MountTable = BTreeMap<String, MountEntry>;

/// The table a fresh vault starts with.
pub fn default_table() -> MountTable {
    BTreeMap::from([(
        "secret/".to_string(),
        MountEntry::kv2("key/value secret storage"),
    )])
}

/// The mount serving `path` (longest prefix match) and the rest of the path after it.
pub fn resolve<'a>(
    table: &'a MountTable,
    path: &'a str,
) -> Option<(&'a str, &'a MountEntry, &'a str)> {
    table
        .iter()
        .filter(|(mount, _)| path.starts_with(mount.as_str()) || format!("{path}/") == **mount)
        .max_by_key(|(mount, _)| mount.len())
        .map(|(mount, entry)| (mount.as_str(), entry, path.get(mount.len()..).unwrap_or("")))
}

/// The table with a new KV v2 mount at `path` (validated), or why not: a mount may not
/// contain another or sit inside one.
pub fn add_kv(table: &MountTable, path: &str, description: &str) -> Result<MountTable, String> {
    let path = validate_mount_path(path)?;
    if table
        .keys()
        .any(|m| m.starts_with(&path) || path.starts_with(m.as_str()))
    {
        return Err(format!("path is already in use at {path}"));
    }
    let mut next = table.clone();
    next.insert(path, MountEntry::kv2(description));
    Ok(next)
}

/// Validates a mount path given by an operator: segments of `[A-Za-z0-9_.-]`, not reserved.
pub fn validate_mount_path(path: &str) -> Result<String, String> {
    let trimmed = path.trim_matches('/');
    if trimmed.is_empty() {
        return Err("mount path must not be empty".into());
    }
    let reserved = ["sys", "auth", "cubbyhole", "identity"];
    if reserved
        .iter()
        .any(|r| trimmed == *r || trimmed.starts_with(&format!("{r}/")))
    {
        return Err(format!("mount path {trimmed:?} is reserved"));
    }
    let ok = trimmed.split('/').all(|seg| {
        !seg.is_empty()
            && seg
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    });
    if !ok {
        return Err(format!("invalid mount path {trimmed:?}"));
    }
    Ok(format!("{trimmed}/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_wins() {
        let mut table = default_table();
        table.insert("secret/team/".into(), MountEntry::kv2("team"));
        let (m, _, rest) = resolve(&table, "secret/team/data/x").unwrap();
        assert_eq!((m, rest), ("secret/team/", "data/x"));
        let (m, _, rest) = resolve(&table, "secret/data/x").unwrap();
        assert_eq!((m, rest), ("secret/", "data/x"));
        let (m, _, rest) = resolve(&table, "secret").unwrap();
        assert_eq!((m, rest), ("secret/", ""));
        assert!(resolve(&table, "nope/data/x").is_none());
    }

    #[test]
    fn mounts_never_nest() {
        let table = default_table();
        assert!(add_kv(&table, "team", "").unwrap().contains_key("team/"));
        for nested in ["secret", "secret/team", "secret/"] {
            assert!(add_kv(&table, nested, "").is_err(), "{nested}");
        }
        let with_team = add_kv(&table, "team/a", "").unwrap();
        assert!(
            add_kv(&with_team, "team", "").is_err(),
            "a mount cannot contain one"
        );
    }

    #[test]
    fn mount_paths() {
        assert_eq!(validate_mount_path("team-kv").unwrap(), "team-kv/");
        assert!(validate_mount_path("sys").is_err());
        assert!(validate_mount_path("a b").is_err());
        assert!(validate_mount_path("").is_err());
    }
}
