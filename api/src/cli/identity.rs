//! `coffer login`, `coffer token …`, `coffer policy …`, `coffer user …`.

use std::path::PathBuf;

use clap::Subcommand;
use serde_json::{json, Value};

use super::{client, exit, output, print_json, print_table, rows, scalar, Common};
use crate::client::ClientError;

/// Where `coffer login` keeps the token, like `~/.vault-token`.
pub fn token_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".coffer-token"))
}

pub(crate) fn prompt(what: &str) -> Result<String, ClientError> {
    eprint!("{what}: ");
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| ClientError::Local(e.to_string()))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

fn kv_args(args: &[String]) -> Result<std::collections::BTreeMap<String, String>, ClientError> {
    args.iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| ClientError::Local(format!("{a:?} is not key=value")))
        })
        .collect()
}

/// `coffer login -method=userpass username=alice [password=…]`.
pub async fn login(common: &Common, method: &str, args: &[String]) -> Result<i32, ClientError> {
    if method != "userpass" {
        return Err(ClientError::Local(format!(
            "unsupported login method {method:?}: use userpass"
        )));
    }
    let mut fields = kv_args(args)?;
    let user = fields
        .remove("username")
        .ok_or_else(|| ClientError::Local("username=… is required".into()))?;
    let password = match fields.remove("password") {
        Some(p) => p,
        None => prompt("Password (will be echoed)")?,
    };
    let c = client(common)?;
    let body = json!({ "password": password });
    let resp = c
        .request("POST", &format!("auth/userpass/login/{user}"), Some(&body))
        .await?;
    let token = resp.body["auth"]["client_token"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if let Some(path) = token_file() {
        coffer_tls::write_private(&path, token.as_bytes())
            .map_err(|e| ClientError::Local(e.to_string()))?;
        eprintln!(
            "Success! You are now authenticated. The token is stored in {}.",
            path.display()
        );
    }
    if common.format == "json" {
        print_json(&resp.body);
    } else {
        let auth = &resp.body["auth"];
        print_table(&[
            ("token".into(), token),
            ("token_accessor".into(), scalar(&auth["accessor"])),
            (
                "token_duration".into(),
                format!("{}s", scalar(&auth["lease_duration"])),
            ),
            ("token_policies".into(), auth["policies"].to_string()),
        ]);
    }
    Ok(exit::OK)
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Show a token (yours if omitted).
    Lookup {
        #[command(flatten)]
        common: Common,
        /// The token to look up.
        token: Option<String>,
    },
    /// Revoke a token and its children (yours, i.e. log out, if omitted).
    Revoke {
        #[command(flatten)]
        common: Common,
        /// The token to revoke.
        token: Option<String>,
        /// Revoke by accessor instead.
        #[arg(long)]
        accessor: Option<String>,
    },
    /// Create a child token.
    Create {
        #[command(flatten)]
        common: Common,
        /// Policies (repeat or comma-separate).
        #[arg(long = "policy", value_delimiter = ',')]
        policies: Vec<String>,
        /// TTL, e.g. 1h.
        #[arg(long)]
        ttl: Option<String>,
        /// Create an orphan.
        #[arg(long)]
        orphan: bool,
    },
    /// Renew your token.
    Renew {
        #[command(flatten)]
        common: Common,
        /// Increment, e.g. 1h.
        #[arg(long)]
        increment: Option<String>,
    },
}

pub async fn token(cmd: TokenCmd) -> Result<i32, ClientError> {
    match cmd {
        TokenCmd::Lookup { common, token } => {
            let c = client(&common)?;
            let resp = match token {
                Some(t) => {
                    c.request("POST", "auth/token/lookup", Some(&json!({ "token": t })))
                        .await?
                }
                None => c.request("GET", "auth/token/lookup-self", None).await?,
            };
            Ok(output(&common, &resp.body, &resp.body["data"]))
        }
        TokenCmd::Revoke {
            common,
            token,
            accessor,
        } => {
            let c = client(&common)?;
            match (token, accessor) {
                (Some(t), _) => {
                    c.request("POST", "auth/token/revoke", Some(&json!({ "token": t })))
                        .await?
                }
                (None, Some(a)) => {
                    c.request(
                        "POST",
                        "auth/token/revoke-accessor",
                        Some(&json!({ "accessor": a })),
                    )
                    .await?
                }
                (None, None) => {
                    let resp = c.request("POST", "auth/token/revoke-self", None).await?;
                    if let Some(path) = token_file() {
                        let _ = std::fs::remove_file(path);
                    }
                    resp
                }
            };
            eprintln!("Success! Revoked token (if it existed)");
            Ok(exit::OK)
        }
        TokenCmd::Create {
            common,
            policies,
            ttl,
            orphan,
        } => {
            let mut body = json!({ "policies": policies, "no_parent": orphan });
            if let Some(ttl) = ttl {
                body["ttl"] = Value::String(ttl);
            }
            let resp = client(&common)?
                .request("POST", "auth/token/create", Some(&body))
                .await?;
            if common.format == "json" {
                print_json(&resp.body);
            } else if common.field.as_deref() == Some("token") {
                println!("{}", scalar(&resp.body["auth"]["client_token"]));
            } else {
                print_table(&rows(&resp.body["auth"]));
            }
            Ok(exit::OK)
        }
        TokenCmd::Renew { common, increment } => {
            let body = json!({ "increment": increment });
            let resp = client(&common)?
                .request("POST", "auth/token/renew-self", Some(&body))
                .await?;
            Ok(output(&common, &resp.body, &resp.body["auth"]))
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum PolicyCmd {
    /// Create or replace a policy from a file (`-` for stdin), HCL or JSON.
    Write {
        #[command(flatten)]
        common: Common,
        /// Policy name.
        name: String,
        /// File with the policy, or `-`.
        file: String,
    },
    /// Show a policy.
    Read {
        #[command(flatten)]
        common: Common,
        /// Policy name.
        name: String,
    },
    /// List policies.
    List(Common),
    /// Delete a policy.
    Delete {
        #[command(flatten)]
        common: Common,
        /// Policy name.
        name: String,
    },
}

pub async fn policy(cmd: PolicyCmd) -> Result<i32, ClientError> {
    match cmd {
        PolicyCmd::Write { common, name, file } => {
            let text = if file == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .map_err(|e| ClientError::Local(e.to_string()))?;
                s
            } else {
                std::fs::read_to_string(&file)
                    .map_err(|e| ClientError::Local(format!("reading {file}: {e}")))?
            };
            let body = json!({ "policy": text });
            client(&common)?
                .request("PUT", &format!("sys/policies/acl/{name}"), Some(&body))
                .await?;
            eprintln!("Success! Uploaded policy: {name}");
            Ok(exit::OK)
        }
        PolicyCmd::Read { common, name } => {
            let resp = client(&common)?
                .request("GET", &format!("sys/policies/acl/{name}"), None)
                .await?;
            if common.format == "json" {
                print_json(&resp.body);
            } else {
                print!("{}", scalar(&resp.body["data"]["policy"]));
            }
            Ok(exit::OK)
        }
        PolicyCmd::List(common) => {
            let resp = client(&common)?
                .request("LIST", "sys/policies/acl", None)
                .await?;
            list_out(&common, &resp.body["data"]["keys"]);
            Ok(exit::OK)
        }
        PolicyCmd::Delete { common, name } => {
            client(&common)?
                .request("DELETE", &format!("sys/policies/acl/{name}"), None)
                .await?;
            eprintln!("Success! Deleted policy: {name}");
            Ok(exit::OK)
        }
    }
}

fn list_out(common: &Common, keys: &Value) {
    if common.format == "json" {
        print_json(keys);
    } else {
        for k in keys.as_array().into_iter().flatten() {
            println!("{}", scalar(k));
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum UserCmd {
    /// Create a userpass user.
    Create {
        #[command(flatten)]
        common: Common,
        /// Username.
        name: String,
        /// Password (prompted for when omitted).
        #[arg(long)]
        password: Option<String>,
        /// Token policies (comma-separated).
        #[arg(long, value_delimiter = ',')]
        policies: Vec<String>,
    },
    /// Delete a user.
    Delete {
        #[command(flatten)]
        common: Common,
        /// Username.
        name: String,
    },
    /// List users.
    List(Common),
    /// Change a user's password.
    Passwd {
        #[command(flatten)]
        common: Common,
        /// Username.
        name: String,
        /// New password (prompted for when omitted).
        #[arg(long)]
        password: Option<String>,
    },
}

pub async fn user(cmd: UserCmd) -> Result<i32, ClientError> {
    match cmd {
        UserCmd::Create {
            common,
            name,
            password,
            policies,
        } => {
            let password = match password {
                Some(p) => p,
                None => prompt("Password (will be echoed)")?,
            };
            let body = json!({ "password": password, "token_policies": policies });
            client(&common)?
                .request("POST", &format!("auth/userpass/users/{name}"), Some(&body))
                .await?;
            eprintln!("Success! Created user {name}");
            Ok(exit::OK)
        }
        UserCmd::Delete { common, name } => {
            client(&common)?
                .request("DELETE", &format!("auth/userpass/users/{name}"), None)
                .await?;
            eprintln!("Success! Deleted user {name}");
            Ok(exit::OK)
        }
        UserCmd::List(common) => {
            let resp = client(&common)?
                .request("LIST", "auth/userpass/users", None)
                .await?;
            list_out(&common, &resp.body["data"]["keys"]);
            Ok(exit::OK)
        }
        UserCmd::Passwd {
            common,
            name,
            password,
        } => {
            let password = match password {
                Some(p) => p,
                None => prompt("New password (will be echoed)")?,
            };
            let body = json!({ "password": password });
            client(&common)?
                .request(
                    "POST",
                    &format!("auth/userpass/users/{name}/password"),
                    Some(&body),
                )
                .await?;
            eprintln!("Success! Changed the password of {name}");
            Ok(exit::OK)
        }
    }
}
