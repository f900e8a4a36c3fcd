//! Which requests are audited, what each is called in the log, and how every audit event is
//! made: one constructor, [`AuditEvent::new`], taking an [`Outcome`]. Pure rules, no I/O; the
//! API layer classifies each request here and maps its answer to an [`Outcome`] once.

use super::record::AuditEvent;

/// A request's operation, Vault-style: `LIST` is its own verb.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestOp {
    /// GET.
    Read,
    /// HEAD (health only).
    Head,
    /// POST or PUT.
    Write,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
    /// LIST.
    List,
}

/// What an event is in a request's life, or that it is none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Written before a state-changing request runs.
    Request,
    /// Written before the answer leaves.
    Response,
    /// Something the node did by itself (a mode change, a join it handled, a start-up step).
    Event,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Request => "request",
            Stage::Response => "response",
            Stage::Event => "",
        }
    }
}

/// How it ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Not known yet (a request record, made before the request runs).
    Pending,
    /// Done.
    Ok,
    /// Not allowed (a policy, a bad token, a refused registration).
    Denied,
    /// Refused for what it asked: bad input, sealed, read-only, rate limited.
    Refused,
    /// Nothing there.
    NotFound,
    /// Failed inside.
    Error,
}

impl Outcome {
    /// The word in the record.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Refused => "refused",
            Outcome::NotFound => "not_found",
            Outcome::Error => "error",
        }
    }
}

/// Who acted, as a record names them.
#[derive(Clone, Debug, Default)]
pub struct Who {
    /// The person (`alice`, `root`), `node N`, `system`, or empty for anonymous.
    pub name: String,
    /// The token's display name, if a token was presented.
    pub display_name: String,
    /// How the person authenticated (`userpass`, `token`, `bootstrap-pack`, `key-file`);
    /// empty for none.
    pub method: String,
    /// HMAC of the token's accessor, if any.
    pub accessor_hmac: String,
    /// The client's address (`local` when none).
    pub client_addr: String,
}

impl AuditEvent {
    /// The one way an audit event is made. The time and the node's mode are filled in when
    /// the event enters the spool; `status` (an HTTP status) is the API layer's to set.
    pub fn new(stage: Stage, who: Who, operation: &str, path: &str, outcome: Outcome) -> Self {
        let or = |s: String, default: &str| if s.is_empty() { default.to_string() } else { s };
        AuditEvent {
            kind: stage.as_str().to_string(),
            actor: or(who.name, "anonymous"),
            display_name: who.display_name,
            accessor_hmac: who.accessor_hmac,
            auth_method: or(who.method, "none"),
            client_addr: or(who.client_addr, "local"),
            operation: operation.to_string(),
            path: path.to_string(),
            outcome: outcome.as_str().to_string(),
            request_id: uuid::Uuid::new_v4().to_string(),
            ..Default::default()
        }
    }
}

/// How a request is audited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestAudit {
    /// Whether it is audited at all (status probes are not, as in Vault).
    pub audited: bool,
    /// Whether it may change state: then it gets a durable request record before it runs.
    pub changes_state: bool,
    /// What the log calls it (`login`, `token.create`, `read`, …).
    pub operation: &'static str,
}

/// How the request `op` on `path` (normalized, after `/v1/`) is audited.
pub fn classify(path: &str, op: RequestOp) -> RequestAudit {
    // Unauthenticated status probes: polled constantly by load balancers and clients, they
    // reveal nothing and change nothing.
    let probe = matches!(path, "sys/health" | "sys/seal-status" | "sys/leader")
        || (path == "sys/init" && op == RequestOp::Read);
    let named = match path {
        _ if path.starts_with("auth/userpass/login/") => Some("login"),
        "auth/token/revoke-self" => Some("logout"),
        "auth/token/create" | "auth/token/create-orphan" => Some("token.create"),
        "auth/token/revoke" | "auth/token/revoke-accessor" => Some("token.revoke"),
        "auth/token/renew-self" => Some("token.renew"),
        "sys/unseal" => Some("unseal"),
        "sys/seal" => Some("seal"),
        "sys/init" => Some("init"),
        "sys/rotate" => Some("rotate"),
        "sys/capabilities" | "sys/capabilities-self" | "sys/capabilities-accessor" => {
            Some("capabilities")
        }
        _ => None,
    };
    // A POST that only asks a question (what may this token do?) changes nothing: it is
    // audited once, with its answer, as a read is.
    let question = named == Some("capabilities");
    let operation = named.unwrap_or(match op {
        RequestOp::Read | RequestOp::Head => "read",
        RequestOp::Write => "write",
        RequestOp::Patch => "patch",
        RequestOp::Delete => "delete",
        RequestOp::List => "list",
    });
    RequestAudit {
        audited: !probe,
        changes_state: !question
            && matches!(op, RequestOp::Write | RequestOp::Patch | RequestOp::Delete),
        operation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probes_are_not_audited_and_writes_are_audited_first() {
        assert!(!classify("sys/health", RequestOp::Head).audited);
        assert!(classify("sys/init", RequestOp::Write).audited);
        let login = classify("auth/userpass/login/alice", RequestOp::Write);
        assert_eq!((login.operation, login.changes_state), ("login", true));
        let read = classify("secret/data/x", RequestOp::Read);
        assert_eq!((read.operation, read.changes_state), ("read", false));
    }

    #[test]
    fn events_name_the_anonymous_and_say_how_they_ended() {
        let e = AuditEvent::new(
            Stage::Request,
            Who::default(),
            "write",
            "a",
            Outcome::Pending,
        );
        assert_eq!(
            (
                e.kind.as_str(),
                e.actor.as_str(),
                e.auth_method.as_str(),
                e.outcome.as_str()
            ),
            ("request", "anonymous", "none", "pending")
        );
        assert_eq!(e.status, 0, "no HTTP status unless the API sets one");
    }
}
