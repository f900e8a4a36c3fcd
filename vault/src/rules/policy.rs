//! ACL policies in Vault's language, parsed from HCL or JSON, and evaluated as pure functions.
//!
//! A policy is a list of path rules with capabilities. Paths may end in `*` (prefix glob) and
//! may contain `+` (exactly one path segment). For a request path, every policy's rules are
//! merged (capabilities of identical patterns are united), the most specific matching pattern
//! is chosen with Vault's priority rules, and `deny` on it refuses everything. `root` grants
//! everything; `default` grants a token what it needs to manage itself.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// A capability a rule grants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Capability {
    /// Create a new entry (a KV write where none exists).
    Create,
    /// Read.
    Read,
    /// Update an existing entry.
    Update,
    /// JSON merge-patch.
    Patch,
    /// Delete.
    Delete,
    /// List keys.
    List,
    /// Root-protected operations.
    Sudo,
    /// Refuse everything on the path, whatever else grants.
    Deny,
}

impl Capability {
    /// The name policies and `sys/capabilities*` use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Read => "read",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::List => "list",
            Self::Sudo => "sudo",
            Self::Deny => "deny",
        }
    }

    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "create" => Self::Create,
            "read" => Self::Read,
            "update" => Self::Update,
            "patch" => Self::Patch,
            "delete" => Self::Delete,
            "list" => Self::List,
            "sudo" => Self::Sudo,
            "deny" => Self::Deny,
            other => return Err(format!("unknown capability {other:?}")),
        })
    }
}

/// One `path "…" { capabilities = [...] }` rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// The pattern.
    pub path: String,
    /// Granted capabilities.
    pub capabilities: BTreeSet<Capability>,
}

/// A parsed policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// Rules in source order.
    pub rules: Vec<Rule>,
}

/// Names that cannot be written or deleted.
pub const BUILTIN: [&str; 2] = ["root", "default"];

/// The `default` policy every non-root token carries (Vault's, trimmed to routes Coffer has).
pub const DEFAULT_POLICY: &str = r#"
path "auth/token/lookup-self" { capabilities = ["read"] }
path "auth/token/renew-self" { capabilities = ["update"] }
path "auth/token/revoke-self" { capabilities = ["update"] }
path "sys/capabilities-self" { capabilities = ["update"] }
"#;

/// Parses a policy from HCL or JSON (detected by the first non-blank character).
pub fn parse(text: &str) -> Result<Policy, String> {
    let trimmed = text.trim_start();
    let rules = if trimmed.starts_with('{') {
        parse_json(trimmed)?
    } else {
        parse_hcl(text)?
    };
    for rule in &rules {
        validate_pattern(&rule.path)?;
    }
    Ok(Policy { rules })
}

fn validate_pattern(path: &str) -> Result<(), String> {
    if let Some(i) = path.find('*') {
        if i != path.len() - 1 {
            return Err(format!("path {path:?}: '*' is only allowed at the end"));
        }
    }
    if path.split('/').any(|seg| seg.contains('+') && seg != "+") {
        return Err(format!("path {path:?}: '+' must be a whole path segment"));
    }
    Ok(())
}

#[derive(Deserialize)]
struct JsonRule {
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    policy: Option<String>,
}

fn parse_json(text: &str) -> Result<Vec<Rule>, String> {
    #[derive(Deserialize)]
    struct Doc {
        path: BTreeMap<String, JsonRule>,
    }
    let doc: Doc = serde_json::from_str(text).map_err(|e| format!("invalid JSON policy: {e}"))?;
    doc.path
        .into_iter()
        .map(|(path, rule)| rule_from(path, rule.capabilities, rule.policy))
        .collect()
}

/// Vault's legacy `policy = "read|write|deny|sudo"` shorthand.
fn legacy(policy: &str) -> Result<Vec<String>, String> {
    let caps: &[&str] = match policy {
        "deny" => &["deny"],
        "read" => &["read", "list"],
        "write" => &["create", "read", "update", "patch", "delete", "list"],
        "sudo" => &[
            "create", "read", "update", "patch", "delete", "list", "sudo",
        ],
        other => return Err(format!("unknown policy shorthand {other:?}")),
    };
    Ok(caps.iter().map(|s| s.to_string()).collect())
}

fn rule_from(
    path: String,
    capabilities: Vec<String>,
    policy: Option<String>,
) -> Result<Rule, String> {
    let mut names = capabilities;
    if let Some(p) = policy {
        names.extend(legacy(&p)?);
    }
    let capabilities = names
        .iter()
        .map(|c| Capability::parse(c))
        .collect::<Result<BTreeSet<_>, _>>()?;
    Ok(Rule {
        path: path.trim_start_matches('/').to_string(),
        capabilities,
    })
}

/// HCL tokens of the subset policies use.
#[derive(Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    LBrace,
    RBrace,
    LBracket,
    RBracket,
    Eq,
    Comma,
}

fn tokenize(text: &str) -> Result<Vec<(Tok, usize)>, String> {
    let mut toks = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut line = 1;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\n' => {
                line += 1;
                i += 1;
            }
            c if c.is_whitespace() => i += 1,
            '#' => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'/') => {
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    if chars[i] == '\n' {
                        line += 1;
                    }
                    i += 1;
                }
                i += 2;
            }
            '{' | '}' | '[' | ']' | '=' | ',' => {
                let t = match c {
                    '{' => Tok::LBrace,
                    '}' => Tok::RBrace,
                    '[' => Tok::LBracket,
                    ']' => Tok::RBracket,
                    '=' => Tok::Eq,
                    _ => Tok::Comma,
                };
                toks.push((t, line));
                i += 1;
            }
            '"' => {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None | Some('\n') => {
                            return Err(format!("line {line}: unterminated string"))
                        }
                        Some('"') => break,
                        Some('\\') => {
                            s.push(*chars.get(i + 1).ok_or(format!("line {line}: bad escape"))?);
                            i += 2;
                        }
                        Some(ch) => {
                            s.push(*ch);
                            i += 1;
                        }
                    }
                }
                i += 1;
                toks.push((Tok::Str(s), line));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                toks.push((Tok::Ident(chars[start..i].iter().collect()), line));
            }
            other => return Err(format!("line {line}: unexpected character {other:?}")),
        }
    }
    Ok(toks)
}

fn parse_hcl(text: &str) -> Result<Vec<Rule>, String> {
    let toks = tokenize(text)?;
    let mut rules = Vec::new();
    let mut i = 0;
    let at = |i: usize| toks.get(i).map_or(0, |t| t.1);
    let expect = |i: usize, want: Tok, what: &str| -> Result<(), String> {
        match toks.get(i) {
            Some((t, _)) if *t == want => Ok(()),
            _ => Err(format!("line {}: expected {what}", at(i))),
        }
    };
    while i < toks.len() {
        match &toks[i].0 {
            Tok::Ident(k) if k == "path" => {}
            _ => return Err(format!("line {}: expected `path \"…\" {{ … }}`", at(i))),
        }
        let path = match toks.get(i + 1) {
            Some((Tok::Str(p), _)) => p.clone(),
            _ => {
                return Err(format!(
                    "line {}: expected a quoted path after `path`",
                    at(i)
                ))
            }
        };
        expect(i + 2, Tok::LBrace, "`{`")?;
        i += 3;
        let mut caps = Vec::new();
        let mut policy = None;
        loop {
            match toks.get(i) {
                Some((Tok::RBrace, _)) => {
                    i += 1;
                    break;
                }
                Some((Tok::Ident(key), _)) => {
                    let key = key.clone();
                    expect(i + 1, Tok::Eq, "`=`")?;
                    i += 2;
                    match (key.as_str(), toks.get(i)) {
                        ("capabilities", Some((Tok::LBracket, _))) => {
                            i += 1;
                            loop {
                                match toks.get(i) {
                                    Some((Tok::Str(s), _)) => caps.push(s.clone()),
                                    Some((Tok::Comma, _)) => {}
                                    Some((Tok::RBracket, _)) => break,
                                    _ => {
                                        return Err(format!(
                                            "line {}: expected a capability list",
                                            at(i)
                                        ))
                                    }
                                }
                                i += 1;
                            }
                            i += 1;
                        }
                        ("policy", Some((Tok::Str(s), _))) => {
                            policy = Some(s.clone());
                            i += 1;
                        }
                        (other, _) => {
                            return Err(format!("line {}: unsupported policy key {other:?}", at(i)))
                        }
                    }
                }
                _ => return Err(format!("line {}: expected a key or `}}`", at(i))),
            }
        }
        rules.push(rule_from(path, caps, policy)?);
    }
    Ok(rules)
}

/// A pattern's match against a request path, with what Vault's priority needs.
fn matches(pattern: &str, path: &str) -> bool {
    let (body, glob) = match pattern.strip_suffix('*') {
        Some(b) => (b, true),
        None => (pattern, false),
    };
    if !body.contains('+') {
        return if glob {
            path.starts_with(body)
        } else {
            path == body
        };
    }
    // Segment-wise for `+`, then the glob tail.
    let pat_segs: Vec<&str> = body.split('/').collect();
    let path_segs: Vec<&str> = path.split('/').collect();
    if path_segs.len() < pat_segs.len() || (!glob && path_segs.len() != pat_segs.len()) {
        return false;
    }
    for (i, ps) in pat_segs.iter().enumerate() {
        let last = i == pat_segs.len() - 1;
        let seg = path_segs[i];
        let ok = if *ps == "+" {
            true
        } else if last && glob {
            seg.starts_with(ps)
        } else {
            seg == *ps
        };
        if !ok {
            return false;
        }
    }
    glob || path_segs.len() == pat_segs.len()
}

/// Vault's priority: is pattern `a` less specific than `b`?
fn lower_priority(a: &str, b: &str) -> bool {
    let first_wild = |p: &str| p.find(['+', '*']).unwrap_or(p.len());
    let (fa, fb) = (first_wild(a), first_wild(b));
    if fa != fb {
        return fa < fb;
    }
    let (ga, gb) = (a.ends_with('*'), b.ends_with('*'));
    if ga != gb {
        return ga;
    }
    let plus = |p: &str| p.matches('+').count();
    if plus(a) != plus(b) {
        return plus(a) > plus(b);
    }
    if a.len() != b.len() {
        return a.len() < b.len();
    }
    a < b
}

/// Capabilities the given policies grant on `path` (empty: nothing). `root` grants all.
pub fn capabilities(policies: &[(&str, &Policy)], path: &str) -> BTreeSet<Capability> {
    matching_capabilities(policies, path).unwrap_or_default()
}

/// Like [`capabilities`], but `None` when no rule matches `path` at all (as opposed to a
/// matching rule that grants nothing or denies).
pub fn matching_capabilities(
    policies: &[(&str, &Policy)],
    path: &str,
) -> Option<BTreeSet<Capability>> {
    use Capability::*;
    if policies.iter().any(|(name, _)| *name == "root") {
        return Some([Create, Read, Update, Patch, Delete, List, Sudo].into());
    }
    let mut merged: BTreeMap<&str, BTreeSet<Capability>> = BTreeMap::new();
    for (_, policy) in policies {
        for rule in &policy.rules {
            merged
                .entry(rule.path.as_str())
                .or_default()
                .extend(rule.capabilities.iter().copied());
        }
    }
    let best = merged
        .iter()
        .filter(|(pattern, _)| matches(pattern, path))
        .max_by(|(a, _), (b, _)| {
            if lower_priority(a, b) {
                std::cmp::Ordering::Less
            } else {
                std::cmp::Ordering::Greater
            }
        });
    match best {
        Some((_, caps)) if caps.contains(&Deny) => Some(BTreeSet::new()),
        Some((_, caps)) => Some(caps.clone()),
        None => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Capability::*;

    const TEAM: &str = r#"
# read-only on the team's secrets
path "secret/data/team/*" {
  capabilities = ["read", "list"]
}
path "secret/metadata/team/*" { capabilities = ["list", "read"] }
/* nothing else */
path "secret/data/team/admin" { capabilities = ["deny"] }
"#;

    fn caps(policy: &str, path: &str) -> BTreeSet<Capability> {
        let p = parse(policy).unwrap();
        capabilities(&[("p", &p)], path)
    }

    #[test]
    fn hcl_and_json_parse_to_the_same_rules() {
        let hcl = parse(r#"path "secret/data/*" { capabilities = ["read", "list"] }"#).unwrap();
        let json =
            parse(r#"{"path": {"secret/data/*": {"capabilities": ["read", "list"]}}}"#).unwrap();
        assert_eq!(hcl, json);
        assert_eq!(
            parse(r#"path "a" { policy = "read" }"#).unwrap().rules[0].capabilities,
            [Read, List].into()
        );
    }

    #[test]
    fn bad_policies_are_refused_with_a_reason() {
        for (text, why) in [
            (
                r#"path "a" { capabilities = ["fly"] }"#,
                "unknown capability",
            ),
            (
                r#"path "a*b" { capabilities = ["read"] }"#,
                "only allowed at the end",
            ),
            (
                r#"path "a/b+/c" { capabilities = ["read"] }"#,
                "whole path segment",
            ),
            (r#"path "a" { capabilities = ["read"]"#, "expected a key"),
            (r#"route "a" {}"#, "expected `path"),
            (
                r#"path "a" { allowed_parameters = "x" }"#,
                "unsupported policy key",
            ),
            (r#"{"path": 3}"#, "invalid JSON policy"),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn evaluation_table() {
        let cases: &[(&str, &[Capability])] = &[
            ("secret/data/team/db", &[Read, List]),
            ("secret/data/team/a/b", &[Read, List]),
            ("secret/metadata/team/x", &[Read, List]),
            ("secret/data/team/admin", &[]),
            ("secret/data/other", &[]),
            ("secret/data/team", &[]),
            ("sys/seal", &[]),
        ];
        for (path, want) in cases {
            assert_eq!(caps(TEAM, path), want.iter().copied().collect(), "{path}");
        }
    }

    #[test]
    fn plus_matches_one_segment_and_priorities_follow_vault() {
        let p = r#"
path "secret/data/+/config" { capabilities = ["read"] }
path "secret/data/*" { capabilities = ["list"] }
path "secret/data/app/config" { capabilities = ["update"] }
"#;
        assert_eq!(caps(p, "secret/data/web/config"), [Read].into());
        assert_eq!(caps(p, "secret/data/web/x/config"), [List].into());
        assert_eq!(
            caps(p, "secret/data/app/config"),
            [Update].into(),
            "exact beats +"
        );
        assert_eq!(caps(p, "secret/data/zzz"), [List].into());
    }

    #[test]
    fn deny_wins_and_policies_merge() {
        let a = parse(r#"path "secret/data/x" { capabilities = ["read"] }"#).unwrap();
        let b = parse(r#"path "secret/data/x" { capabilities = ["update"] }"#).unwrap();
        let d = parse(r#"path "secret/data/x" { capabilities = ["deny"] }"#).unwrap();
        assert_eq!(
            capabilities(&[("a", &a), ("b", &b)], "secret/data/x"),
            [Read, Update].into()
        );
        assert_eq!(
            capabilities(&[("a", &a), ("d", &d)], "secret/data/x"),
            BTreeSet::new()
        );
        assert_eq!(
            capabilities(&[("root", &Policy::default())], "anything").len(),
            7
        );
    }

    #[test]
    fn default_policy_lets_a_token_manage_itself_only() {
        assert_eq!(
            caps(DEFAULT_POLICY, "auth/token/lookup-self"),
            [Read].into()
        );
        assert_eq!(caps(DEFAULT_POLICY, "auth/token/create"), BTreeSet::new());
    }
}
