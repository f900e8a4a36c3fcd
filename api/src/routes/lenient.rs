//! Lenient JSON decoding where Vault is lenient. Vault decodes request fields "weakly": a
//! number may arrive as a string (`"versions": ["2"]` from the Vault and OpenBao CLIs), a
//! list as a comma-separated string, a boolean as `"true"`. Clients written against Vault rely
//! on it, so these fields accept the same forms; anything else is still refused.

use serde::de::Error;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::error::ApiError;

fn to_u64<E: Error>(v: &Value) -> Result<u64, E> {
    match v {
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| E::custom("expected a non-negative integer")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| E::custom("expected a non-negative integer")),
        _ => Err(E::custom("expected a non-negative integer")),
    }
}

/// An optional non-negative integer, as a number or a numeric string.
pub fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => to_u64(&v).map(Some),
    }
}

/// A list of non-negative integers: an array of numbers or numeric strings, or a
/// comma-separated string.
pub fn u64_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    match Value::deserialize(d)? {
        Value::Array(items) => items.iter().map(to_u64).collect(),
        Value::String(s) => s
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| to_u64(&Value::String(p.to_string())))
            .collect(),
        v @ Value::Number(_) => Ok(vec![to_u64(&v)?]),
        _ => Err(D::Error::custom("expected a list of versions")),
    }
}

/// An optional boolean, as a JSON boolean or `"true"`/`"false"`.
pub fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::String(s)) => s
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom("expected a boolean")),
        Some(_) => Err(D::Error::custom("expected a boolean")),
    }
}

/// An optional duration: a Go duration string (`"1h30m"`) or a number of seconds.
pub fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(D::Error::custom("expected a duration")),
    }
}

/// A duration field (`"1h"`, `"90m"`, `3600`) in seconds; `field` names it in the error.
pub fn duration_secs(field: &str, value: Option<String>) -> Result<Option<u64>, ApiError> {
    value
        .map(|v| {
            coffer_vault::clock::parse_duration_secs(&v)
                .ok_or_else(|| ApiError::BadRequest(format!("{field}: {v:?} is not a duration")))
        })
        .transpose()
}

/// A policy list as Vault accepts it: a list of strings, or one comma-separated string.
pub fn policy_list(v: Option<Value>) -> Result<Option<Vec<String>>, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(
            s.split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
        )),
        Some(Value::Array(items)) => items
            .into_iter()
            .map(|i| match i {
                Value::String(s) => Ok(s),
                _ => Err(ApiError::BadRequest("policies must be strings".into())),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ApiError::BadRequest(
            "policies must be a list or a comma-separated string".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct Versions {
        #[serde(deserialize_with = "u64_list")]
        versions: Vec<u64>,
    }

    #[test]
    fn versions_in_every_form_vault_accepts() {
        for body in [
            r#"{"versions":[1,2]}"#,
            r#"{"versions":["1","2"]}"#,
            r#"{"versions":"1,2"}"#,
        ] {
            let v: Versions = serde_json::from_str(body).unwrap();
            assert_eq!(v.versions, vec![1, 2], "{body}");
        }
        for bad in [
            r#"{"versions":["x"]}"#,
            r#"{"versions":[-1]}"#,
            r#"{"versions":{}}"#,
        ] {
            assert!(serde_json::from_str::<Versions>(bad).is_err(), "{bad}");
        }
    }
}
