//! Fuzz targets: the vault's parsers and rules driven by arbitrary bytes. Each must return
//! (any `Result`) for every input and never panic. Run briefly by `tests/tests/t95_fuzz.rs`
//! on every CI run and at length by the `coffer-fuzz` binary.

use std::collections::BTreeMap;

use crate::audit::SpoolKey;

/// A policy in HCL or JSON, then an evaluation of a path cut from the same input.
pub fn policy(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(policy) = crate::rules::policy::parse(&text) {
        let path = text.lines().last().unwrap_or("");
        let _ = crate::rules::policy::capabilities(&[("p", &policy)], path);
        let _ = crate::rules::policy::matching_capabilities(&[("p", &policy)], path);
    }
}

/// KV v2 rules: a secret's metadata (JSON) and a mount config from the input, then a write
/// with an optional CAS, soft delete, undelete, destroy and pruning of versions it names.
pub fn kv2(data: &[u8]) {
    let (head, tail) = data.split_at(data.len().min(16));
    let mut numbers = head
        .chunks(4)
        .map(|c| c.iter().fold(0u64, |a, b| (a << 8) | u64::from(*b)));
    let cas = numbers.next().filter(|n| n % 3 != 0);
    let versions: Vec<u64> = numbers.collect();
    let meta: Option<crate::rules::kv::SecretMeta> = serde_json::from_slice(tail).ok();
    let config = crate::rules::kv::MountConfig {
        max_versions: u32::try_from(versions.first().copied().unwrap_or(0) % 20).unwrap_or(0),
        cas_required: cas.is_some_and(|c| c % 2 == 0),
        delete_version_after_secs: versions.get(1).copied().unwrap_or(0),
        metadata_cas_required: cas.is_some_and(|c| c % 5 == 0),
    };
    let now = time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000);
    if let Ok(mut plan) = crate::rules::kv::plan_write(meta, &config, cas, now) {
        crate::rules::kv::soft_delete(&mut plan.meta, &versions, now);
        crate::rules::kv::undelete(&mut plan.meta, &versions, now);
        let _ = crate::rules::kv::destroy(&mut plan.meta, &versions, now);
        let _ = crate::rules::kv::prune(&mut plan.meta, &config);
        let _ = crate::rules::kv::resolve_version(&plan.meta, versions.first().copied());
    }
    let text = String::from_utf8_lossy(data);
    let _ = crate::rules::kv::validate_path(&text);
    let _ = crate::clock::parse_duration_secs(&text);
    let _ = crate::rules::mount::validate_mount_path(&text);
}

/// A bootstrap pack file: framing and cost bounds (no key derivation), and decrypted
/// contents decoded as if the passphrase had been right.
pub fn pack(data: &[u8]) {
    let _ = crate::rules::pack::parse_header(data);
    let _ = crate::rules::pack::decode_contents(data, 0);
}

/// A spool segment: every line parsed, authenticated and opened as the shipper and
/// `audit verify` do.
pub fn spool_segment(data: &[u8]) {
    let key = SpoolKey::from_bytes([7u8; 32]);
    crate::audit::spool::check_segment(data, "fuzz-epoch", &key, &[9u8; 32]);
}

/// A JSON body of a KV write, metadata write or token request, as the API would receive it.
pub fn json_body(data: &[u8]) {
    let _ = serde_json::from_slice::<BTreeMap<String, serde_json::Value>>(data);
    let _ = serde_json::from_slice::<crate::rules::kv::SecretMeta>(data);
}
