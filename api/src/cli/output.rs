//! How answers are printed: tables or JSON on stdout, one field alone, and the warning when
//! a read-only standby answered.

use serde_json::Value;

use super::{exit, Common};

pub(crate) fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

pub(crate) fn print_table(rows: &[(String, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(3).max(3);
    println!("{:width$}    Value", "Key");
    println!("{:width$}    -----", "---");
    for (k, v) in rows {
        println!("{k:width$}    {v}");
    }
}

pub(crate) fn scalar(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "n/a".into(),
        other => other.to_string(),
    }
}

pub(crate) fn rows(obj: &Value) -> Vec<(String, String)> {
    obj.as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), scalar(v))).collect())
        .unwrap_or_default()
}

/// Prints `data` in the chosen format, or one field of it.
pub(crate) fn output(common: &Common, whole: &Value, data: &Value) -> i32 {
    if let Some(field) = &common.field {
        return match data.get(field) {
            Some(v) => {
                println!("{}", scalar(v));
                exit::OK
            }
            None => {
                eprintln!("Error: field {field:?} not present in secret");
                exit::LOCAL
            }
        };
    }
    if common.format == "json" {
        print_json(whole);
    } else {
        print_table(&rows(data));
    }
    exit::OK
}

/// One line on stderr when the answer came from a read-only standby, with its staleness.
pub(crate) fn warn_if_read_only(resp: &crate::client::Response) {
    let header = |name: &str| {
        resp.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("?")
            .to_string()
    };
    if resp.headers.contains_key("x-coffer-read-only") {
        eprintln!(
            "Warning: read-only standby answered (no quorum): data as of index {}, last contact with the leader {} ms ago",
            header("x-coffer-applied-index"),
            header("x-coffer-last-contact-ms")
        );
    }
}
