//! Client credentials: what a token lets its holder do.
//!
//! A credential is set and revoked by events (`CredentialSet`,
//! `CredentialRevoked`), so every node of the cluster checks requests
//! against the same [`Permissions`]. Names (functions, queues, cache
//! namespaces) and topics are matched with the topic pattern rules of
//! [`crate::topic`]: `*` is one dot-separated level, `#` any number.

use serde::{Deserialize, Serialize};

use crate::topic::{pattern_covers, pattern_matches};

/// What one credential allows. Each list holds patterns; an empty list
/// allows nothing of that kind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Permissions {
    /// Functions it may call (the queue functions are checked by `queues`).
    #[serde(default)]
    pub call: Vec<String>,
    /// Functions it may register as a worker (and withdraw).
    #[serde(default)]
    pub register: Vec<String>,
    /// Topics it may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Topics it may subscribe to: each subscription pattern must be covered.
    #[serde(default)]
    pub subscribe: Vec<String>,
    /// Queues it may use (create, send, receive, ack, purge, delete, stats).
    #[serde(default)]
    pub queues: Vec<String>,
    /// Cache namespaces it may use.
    #[serde(default)]
    pub cache: Vec<String>,
    /// Read-only SQL on admin HTTP (`/sql`).
    #[serde(default)]
    pub sql: bool,
    /// Every admin HTTP endpoint: membership, federation, credentials, SQL.
    #[serde(default)]
    pub admin: bool,
}

/// One thing a client asks to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action<'a> {
    Call(&'a str),
    Register(&'a str),
    Publish(&'a str),
    /// Subscribing with this pattern.
    Subscribe(&'a str),
    Queue(&'a str),
    /// Every queue at once (stats without a queue name).
    AllQueues,
    Cache(&'a str),
    Sql,
    Admin,
}

impl Permissions {
    /// Every permission: what a node without credentials gives everyone.
    pub fn everything() -> Self {
        let all = || vec!["#".to_string()];
        Permissions {
            call: all(),
            register: all(),
            publish: all(),
            subscribe: all(),
            queues: all(),
            cache: all(),
            sql: true,
            admin: true,
        }
    }

    /// Whether `action` is allowed.
    pub fn allows(&self, action: Action<'_>) -> bool {
        let any_matches =
            |patterns: &[String], name: &str| patterns.iter().any(|p| pattern_matches(p, name));
        match action {
            Action::Call(name) => any_matches(&self.call, name),
            Action::Register(name) => any_matches(&self.register, name),
            Action::Publish(topic) => any_matches(&self.publish, topic),
            Action::Subscribe(pattern) => self.subscribe.iter().any(|p| pattern_covers(p, pattern)),
            Action::Queue(name) => any_matches(&self.queues, name),
            Action::AllQueues => self.queues.iter().any(|p| pattern_covers(p, "#")),
            Action::Cache(namespace) => any_matches(&self.cache, namespace),
            Action::Sql => self.sql || self.admin,
            Action::Admin => self.admin,
        }
    }

    /// Every pattern of the credential, for validation.
    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        [
            &self.call,
            &self.register,
            &self.publish,
            &self.subscribe,
            &self.queues,
            &self.cache,
        ]
        .into_iter()
        .flatten()
        .map(String::as_str)
    }
}

impl std::fmt::Display for Action<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Call(name) => write!(f, "call function {name}"),
            Action::Register(name) => write!(f, "register function {name}"),
            Action::Publish(topic) => write!(f, "publish to {topic}"),
            Action::Subscribe(pattern) => write!(f, "subscribe to {pattern}"),
            Action::Queue(name) => write!(f, "use queue {name}"),
            Action::AllQueues => write!(f, "read every queue"),
            Action::Cache(namespace) => write!(f, "use cache namespace {namespace}"),
            Action::Sql => write!(f, "run SQL"),
            Action::Admin => write!(f, "use admin endpoints"),
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn each_kind_is_checked_against_its_own_list() {
        let permissions = Permissions {
            call: vec!["echo".into(), "billing.#".into()],
            subscribe: vec!["orders.*".into()],
            queues: vec!["jobs".into()],
            sql: true,
            ..Permissions::default()
        };
        assert!(permissions.allows(Action::Call("echo")));
        assert!(permissions.allows(Action::Call("billing.charge.card")));
        assert!(!permissions.allows(Action::Call("echos")));
        assert!(!permissions.allows(Action::Register("echo")));
        assert!(!permissions.allows(Action::Publish("orders.new")));
        assert!(permissions.allows(Action::Subscribe("orders.new")));
        assert!(permissions.allows(Action::Subscribe("orders.*")));
        assert!(!permissions.allows(Action::Subscribe("orders.#")));
        assert!(permissions.allows(Action::Queue("jobs")));
        assert!(!permissions.allows(Action::Queue("jobs.dlq")));
        assert!(!permissions.allows(Action::AllQueues));
        assert!(!permissions.allows(Action::Cache("jobs")));
        assert!(permissions.allows(Action::Sql));
        assert!(!permissions.allows(Action::Admin));
        let everything = Permissions::everything();
        assert!(everything.allows(Action::AllQueues));
        assert!(everything.allows(Action::Subscribe("#")));
        assert!(everything.allows(Action::Admin));
    }
}
