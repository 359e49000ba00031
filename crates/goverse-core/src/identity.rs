use std::fmt;
use std::sync::Arc;

/// Who a call acts for: the client a gate authenticated, with the user and roles its
/// authorisation hook assigned. Bound to the client's connection by the gate, never taken from a
/// field the client fills in, and carried with every call of the chain the client started.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ClientIdentity {
    client_id: Arc<str>,
    user_id: Arc<str>,
    roles: Arc<[Arc<str>]>,
}

impl ClientIdentity {
    /// An identity for `client_id` (`gateAddr/uniqueId`), acting as `user_id` with `roles`.
    pub fn new(
        client_id: impl Into<Arc<str>>,
        user_id: impl Into<Arc<str>>,
        roles: impl IntoIterator<Item = impl Into<Arc<str>>>,
    ) -> Self {
        Self {
            client_id: client_id.into(),
            user_id: user_id.into(),
            roles: roles.into_iter().map(Into::into).collect(),
        }
    }

    /// The client id, `gateAddr/uniqueId`; pushes to it reach this client. Empty for a call made
    /// without a registered client (a plain HTTP request, say).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The user the authorisation hook assigned; empty for anonymous clients.
    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    /// The roles the authorisation hook assigned.
    pub fn roles(&self) -> impl ExactSizeIterator<Item = &str> {
        self.roles.iter().map(|r| &**r)
    }

    /// Whether the identity holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| &**r == role)
    }
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("client_id", &self.client_id)
            .field("user_id", &self.user_id)
            .field("roles", &self.roles)
            .finish()
    }
}

/// The gate part of a client id (`gateAddr` of `gateAddr/uniqueId`), or `None` when the id has
/// no `/` or an empty part.
pub fn gate_of_client(client_id: &str) -> Option<&str> {
    let (gate, unique) = client_id.rsplit_once('/')?;
    (!gate.is_empty() && !unique.is_empty()).then_some(gate)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_part_of_client_ids() {
        assert_eq!(
            gate_of_client("127.0.0.1:49000/abc"),
            Some("127.0.0.1:49000")
        );
        assert_eq!(gate_of_client("gate/x/abc"), Some("gate/x"));
        assert_eq!(gate_of_client("abc"), None);
        assert_eq!(gate_of_client("/abc"), None);
        assert_eq!(gate_of_client("gate/"), None);
    }

    #[test]
    fn roles() {
        let id = ClientIdentity::new("g/1", "alice", ["admin", "player"]);
        assert!(id.has_role("admin"));
        assert!(!id.has_role("root"));
        assert_eq!(id.roles().collect::<Vec<_>>(), ["admin", "player"]);
    }
}
