//! Access and lifecycle rules in upstream GoVerse's YAML shape (`object_access_rules`,
//! `object_lifecycle_rules`), compiled once and checked on every client request.
//!
//! A pattern is a literal (exact match) or `/regexp/`, anchored to the whole string. Rules are
//! evaluated top to bottom and the first match wins. With access rules configured, a call no rule
//! matches is rejected; with none configured, every call is allowed. Lifecycle rules default to
//! create allowed and delete internal (clients cannot delete) whether or not any are configured.

use regex::Regex;
use serde::{Deserialize, Serialize};

/// Who may use a matched object or method.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Access {
    /// Nobody.
    Reject,
    /// Objects on nodes only, not clients.
    Internal,
    /// Clients through a gate only, not objects.
    External,
    /// Clients and objects.
    Allow,
}

impl Access {
    /// Whether a client (through a gate) is allowed.
    pub fn allows_clients(self) -> bool {
        matches!(self, Self::Allow | Self::External)
    }
}

/// One `object_access_rules` entry. Upstream's earlier form, `object:` (an object ID pattern,
/// whatever the type), reads as `type: /.*/` with that `id`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "RawAccessRule")]
pub struct AccessRule {
    /// Object type pattern (required).
    #[serde(rename = "type", default)]
    pub object_type: String,
    /// Object ID pattern; empty matches every ID.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// Method pattern; empty matches every method.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub method: String,
    /// What the rule grants.
    pub access: Access,
}

/// An access rule as written, in either of upstream's forms.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccessRule {
    #[serde(rename = "type", default)]
    object_type: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    object: String,
    #[serde(default)]
    method: String,
    access: Access,
}

impl AccessRule {
    /// A rule granting `access` to methods matching `method` of objects of `object_type` whose IDs
    /// match `id` (each a name, a `/regex/`, or empty for any).
    pub fn new(object_type: &str, id: &str, method: &str, access: Access) -> Self {
        Self {
            object_type: object_type.to_owned(),
            id: id.to_owned(),
            method: method.to_owned(),
            access,
        }
    }
}

impl TryFrom<RawAccessRule> for AccessRule {
    type Error = String;

    fn try_from(raw: RawAccessRule) -> Result<Self, String> {
        let (object_type, id) = match (raw.object.is_empty(), raw.object_type.is_empty()) {
            (true, _) => (raw.object_type, raw.id),
            (false, true) if raw.id.is_empty() => ("/.*/".to_owned(), raw.object),
            (false, _) => {
                return Err(format!(
                    "a rule gives `object` ({:?}) and also `type` or `id`: `object` is upstream's \
                     earlier form of an ID pattern for any type; use either it or `type`/`id`",
                    raw.object
                ));
            }
        };
        Ok(Self {
            object_type,
            id,
            method: raw.method,
            access: raw.access,
        })
    }
}

/// Which operation a lifecycle rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Lifecycle {
    /// Creating objects.
    Create,
    /// Deleting objects.
    Delete,
    /// Both.
    All,
}

/// One `object_lifecycle_rules` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LifecycleRule {
    /// Object type pattern (required).
    #[serde(rename = "type", default)]
    pub object_type: String,
    /// Object ID pattern; empty matches every ID.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// The operation.
    pub lifecycle: Lifecycle,
    /// What the rule grants.
    pub access: Access,
}

/// A rule that does not compile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// A rule has no `type`.
    #[error("{list} rule {index}: missing type")]
    MissingType {
        /// `object_access_rules` or `object_lifecycle_rules`.
        list: &'static str,
        /// Position of the rule, from 0.
        index: usize,
    },
    /// A `/regexp/` pattern is not a valid regular expression.
    #[error("{list} rule {index}: invalid {field} pattern {pattern:?}: {cause}")]
    BadPattern {
        /// `object_access_rules` or `object_lifecycle_rules`.
        list: &'static str,
        /// Position of the rule, from 0.
        index: usize,
        /// `type`, `id` or `method`.
        field: &'static str,
        /// The pattern as written.
        pattern: String,
        /// The regex error.
        cause: String,
    },
}

#[derive(Debug, Clone)]
enum Pattern {
    Any,
    Literal(String),
    Regex(Regex),
}

impl Pattern {
    fn compile(
        pattern: &str,
        optional: bool,
        list: &'static str,
        index: usize,
        field: &'static str,
    ) -> Result<Self, RuleError> {
        if pattern.is_empty() {
            return if optional {
                Ok(Self::Any)
            } else {
                Err(RuleError::MissingType { list, index })
            };
        }
        match pattern
            .strip_prefix('/')
            .and_then(|p| p.strip_suffix('/'))
            .filter(|_| pattern.len() > 1)
        {
            Some(body) => Regex::new(&format!("^(?:{body})$"))
                .map(Self::Regex)
                .map_err(|err| RuleError::BadPattern {
                    list,
                    index,
                    field,
                    pattern: pattern.to_owned(),
                    cause: err.to_string(),
                }),
            None => Ok(Self::Literal(pattern.to_owned())),
        }
    }

    fn matches(&self, s: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Literal(l) => l == s,
            Self::Regex(r) => r.is_match(s),
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledAccess {
    object_type: Pattern,
    id: Pattern,
    method: Pattern,
    access: Access,
}

#[derive(Debug, Clone)]
struct CompiledLifecycle {
    object_type: Pattern,
    id: Pattern,
    lifecycle: Lifecycle,
    access: Access,
}

/// Compiled access and lifecycle rules.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    access: Option<Vec<CompiledAccess>>,
    lifecycle: Vec<CompiledLifecycle>,
}

impl Rules {
    /// Compiles the rules; an empty access list means "allow every call".
    pub fn new(access: &[AccessRule], lifecycle: &[LifecycleRule]) -> Result<Self, RuleError> {
        const ACCESS: &str = "object_access_rules";
        const LIFECYCLE: &str = "object_lifecycle_rules";
        let access = if access.is_empty() {
            None
        } else {
            let mut compiled = Vec::with_capacity(access.len());
            for (i, r) in access.iter().enumerate() {
                compiled.push(CompiledAccess {
                    object_type: Pattern::compile(&r.object_type, false, ACCESS, i, "type")?,
                    id: Pattern::compile(&r.id, true, ACCESS, i, "id")?,
                    method: Pattern::compile(&r.method, true, ACCESS, i, "method")?,
                    access: r.access,
                });
            }
            Some(compiled)
        };
        let mut compiled = Vec::with_capacity(lifecycle.len());
        for (i, r) in lifecycle.iter().enumerate() {
            compiled.push(CompiledLifecycle {
                object_type: Pattern::compile(&r.object_type, false, LIFECYCLE, i, "type")?,
                id: Pattern::compile(&r.id, true, LIFECYCLE, i, "id")?,
                lifecycle: r.lifecycle,
                access: r.access,
            });
        }
        Ok(Self {
            access,
            lifecycle: compiled,
        })
    }

    /// The access a client call of `object_type/id.method` gets.
    pub fn call_access(&self, object_type: &str, id: &str, method: &str) -> Access {
        let Some(rules) = &self.access else {
            return Access::Allow;
        };
        rules
            .iter()
            .find(|r| {
                r.object_type.matches(object_type) && r.id.matches(id) && r.method.matches(method)
            })
            .map_or(Access::Reject, |r| r.access)
    }

    /// The access a `Create` or `Delete` of `object_type/id` gets.
    pub fn lifecycle_access(&self, op: Lifecycle, object_type: &str, id: &str) -> Access {
        self.lifecycle
            .iter()
            .find(|r| {
                (r.lifecycle == op || r.lifecycle == Lifecycle::All)
                    && r.object_type.matches(object_type)
                    && r.id.matches(id)
            })
            .map_or(
                match op {
                    Lifecycle::Delete => Access::Internal,
                    Lifecycle::Create | Lifecycle::All => Access::Allow,
                },
                |r| r.access,
            )
    }
}

impl Rules {
    /// A client's call of `object_type/id.method`, as the rules judge it: `PermissionDenied`
    /// naming what was refused, or `Ok`. The gate asks first, and the node again for requests
    /// a gate sent.
    pub fn check_client_call(
        &self,
        object_type: &str,
        id: &str,
        method: &str,
    ) -> Result<(), crate::CallError> {
        if self.call_access(object_type, id, method).allows_clients() {
            return Ok(());
        }
        Err(crate::CallError::new(
            crate::ErrorCode::PermissionDenied,
            format!(
                "access denied for {}/{} method {:?}",
                crate::Clipped(object_type),
                crate::Clipped(id),
                crate::Clipped(method)
            ),
        ))
    }

    /// A client's create or delete of `object_type/id`, as the rules judge it.
    pub fn check_client_lifecycle(
        &self,
        op: Lifecycle,
        object_type: &str,
        id: &str,
    ) -> Result<(), crate::CallError> {
        if self.lifecycle_access(op, object_type, id).allows_clients() {
            return Ok(());
        }
        let what = match op {
            Lifecycle::Delete => "delete",
            Lifecycle::Create | Lifecycle::All => "create",
        };
        Err(crate::CallError::new(
            crate::ErrorCode::PermissionDenied,
            format!(
                "{what} denied for {}/{}",
                crate::Clipped(object_type),
                crate::Clipped(id)
            ),
        ))
    }

    /// The type names the rules name: literal type patterns, and the plain alternatives of
    /// regex ones (`/ChatRoom|ChatRoomMgr/`).
    pub fn named_types(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .access
            .iter()
            .flatten()
            .map(|r| &r.object_type)
            .chain(self.lifecycle.iter().map(|r| &r.object_type))
            .flat_map(|p| match p {
                Pattern::Any => Vec::new(),
                Pattern::Literal(l) => vec![l.clone()],
                Pattern::Regex(r) => {
                    let body = r.as_str().trim_start_matches("^(?:").trim_end_matches(")$");
                    body.split('|')
                        .filter(|alt| {
                            !alt.is_empty() && alt.chars().all(|c| c.is_alphanumeric() || c == '_')
                        })
                        .map(str::to_owned)
                        .collect()
                }
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Where clients could take an ID another type needs (squatting): each `(type, id)` such
    /// that a client may call `type` under `id`, an ID named after another of `types`
    /// (`Other-1`, `Other0`). Calls activate what they name, so one such call takes the ID.
    /// Without access rules every pair overlaps. `goverse config check` warns about these.
    pub fn id_space_overlaps(&self, types: &[String]) -> Vec<(String, String)> {
        let methods: Vec<&str> = self
            .access
            .iter()
            .flatten()
            .filter_map(|r| match &r.method {
                Pattern::Literal(m) => Some(m.as_str()),
                _ => None,
            })
            .chain(["Zz9AnyMethod"])
            .collect();
        let mut overlaps = Vec::new();
        for object_type in types {
            for other in types.iter().filter(|other| *other != object_type) {
                for id in [format!("{other}-1"), format!("{other}0")] {
                    if methods
                        .iter()
                        .any(|m| self.call_access(object_type, &id, m).allows_clients())
                    {
                        overlaps.push((object_type.clone(), id));
                        break;
                    }
                }
            }
        }
        overlaps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(t: &str, id: &str, method: &str, access: Access) -> AccessRule {
        AccessRule {
            object_type: t.into(),
            id: id.into(),
            method: method.into(),
            access,
        }
    }

    #[test]
    fn no_access_rules_allow_everything() {
        let rules = Rules::new(&[], &[]).unwrap();
        assert_eq!(rules.call_access("Any", "x", "M"), Access::Allow);
    }

    #[test]
    fn first_match_wins_and_default_is_reject() {
        let rules = Rules::new(
            &[
                rule("ChatRoom", "", "/(Join|Send)/", Access::Allow),
                rule("ChatRoom", "", "", Access::Internal),
                rule("/Count.*/", "/c-[0-9]+/", "", Access::External),
            ],
            &[],
        )
        .unwrap();
        assert_eq!(rules.call_access("ChatRoom", "r", "Join"), Access::Allow);
        assert_eq!(
            rules.call_access("ChatRoom", "r", "Notify"),
            Access::Internal
        );
        assert_eq!(
            rules.call_access("Counter", "c-12", "Add"),
            Access::External
        );
        // Anchored: neither a prefix nor a suffix match counts.
        assert_eq!(rules.call_access("Counter", "c-12x", "Add"), Access::Reject);
        assert_eq!(rules.call_access("XCounter", "c-1", "Add"), Access::Reject);
        assert_eq!(
            rules.call_access("ChatRoom", "r", "JoinX"),
            Access::Internal
        );
        assert_eq!(rules.call_access("Other", "x", "M"), Access::Reject);
    }

    #[test]
    fn lifecycle_defaults_and_rules() {
        let rules = Rules::new(&[], &[]).unwrap();
        assert_eq!(
            rules.lifecycle_access(Lifecycle::Create, "T", "x"),
            Access::Allow
        );
        assert_eq!(
            rules.lifecycle_access(Lifecycle::Delete, "T", "x"),
            Access::Internal
        );
        let rules = Rules::new(
            &[],
            &[
                LifecycleRule {
                    object_type: "Counter".into(),
                    id: String::new(),
                    lifecycle: Lifecycle::All,
                    access: Access::Allow,
                },
                LifecycleRule {
                    object_type: "/.*/".into(),
                    id: String::new(),
                    lifecycle: Lifecycle::Create,
                    access: Access::Internal,
                },
            ],
        )
        .unwrap();
        assert!(
            rules
                .lifecycle_access(Lifecycle::Delete, "Counter", "c")
                .allows_clients()
        );
        assert!(
            !rules
                .lifecycle_access(Lifecycle::Create, "Chat", "c")
                .allows_clients()
        );
        assert!(
            !rules
                .lifecycle_access(Lifecycle::Delete, "Chat", "c")
                .allows_clients()
        );
    }

    #[test]
    fn bad_rules_are_named() {
        let err = Rules::new(&[rule("", "", "", Access::Allow)], &[]).unwrap_err();
        assert_eq!(err.to_string(), "object_access_rules rule 0: missing type");
        let err = Rules::new(&[rule("T", "/([/", "", Access::Allow)], &[]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("object_access_rules rule 0: invalid id pattern \"/([/\""),
            "{err}"
        );
    }

    #[test]
    fn upstream_yaml_loads() {
        #[derive(Debug, Deserialize)]
        struct Doc {
            object_access_rules: Vec<AccessRule>,
            object_lifecycle_rules: Vec<LifecycleRule>,
        }
        let doc: Doc = serde_yaml_ng::from_str(
            r#"
object_access_rules:
  - type: ChatRoomMgr
    id: ChatRoomMgr0
    method: ListChatRooms
    access: ALLOW
  - type: /.*/
    access: REJECT
object_lifecycle_rules:
  - type: ChatRoom
    lifecycle: DELETE
    access: EXTERNAL
"#,
        )
        .unwrap();
        let rules = Rules::new(&doc.object_access_rules, &doc.object_lifecycle_rules).unwrap();
        assert!(
            rules
                .call_access("ChatRoomMgr", "ChatRoomMgr0", "ListChatRooms")
                .allows_clients()
        );
        assert!(
            !rules
                .call_access("ChatRoomMgr", "ChatRoomMgr0", "Other")
                .allows_clients()
        );
        assert!(
            rules
                .lifecycle_access(Lifecycle::Delete, "ChatRoom", "r")
                .allows_clients()
        );
        let bad: Result<Doc, _> = serde_yaml_ng::from_str(
            "object_access_rules:\n  - type: T\n    access: MAYBE\nobject_lifecycle_rules: []\n",
        );
        assert!(bad.unwrap_err().to_string().contains("MAYBE"));
    }
}
