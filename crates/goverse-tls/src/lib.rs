//! TLS for every port and link of a GoVerse cluster, on rustls.
//!
//! - [`ServerTls`]: a port's certificate and what it asks of clients ([`ClientAuth`]); its
//!   [`ServerTls::accept`] completes a TLS handshake, or reports a plaintext client, which
//!   [`refuse_plaintext`] answers in its own protocol (a gRPC status, an HTTP 400) before closing.
//! - [`ClientTls`]: whom a process trusts and what it presents; [`ClientTls::connect`] runs the
//!   handshake over a connection it opened, checking the server as much as [`Verify`] says.
//! - Both are built from PEM files and rebuilt by [`watch`] on SIGHUP or when a file changes:
//!   new connections get the new configuration, open ones keep theirs.
//! - Refused certificates are named in the log (subject, names, validity, and why), and a
//!   process's own certificate is checked when loaded (an expired one is an error in the log).
//! - [`dev::DevCa`]: a development CA for `goverse config gen --tls` and tests.
//!
//! Cluster members' certificates name them with a URI, `goverse://node/ID` or
//! `goverse://gate/ID` ([`CertInfo::member`]).

mod client;
pub mod dev;
mod files;
mod reload;
mod server;
mod verify;

use std::sync::Arc;

pub use client::{ClientConn, ClientFiles, ClientTls, connector, server_name};
pub use files::{
    CertInfo, MEMBER_URI_PREFIX, TlsError, explain, load_certs, load_key, load_roots, rfc3339,
};
pub use reload::{Reloadable, reload_all, watch};
pub use server::{
    ALPN_H2, ALPN_HTTP, ClientAuth, Handshake, HandshakeError, PLAINTEXT_REFUSED, Rewind,
    ServerFiles, ServerTls, TlsConn, TlsConnectInfo, peer_certificate, refuse_plaintext,
    remote_addr,
};
pub use verify::Verify;

/// The cryptography every configuration uses: rustls' aws-lc-rs provider (with post-quantum
/// hybrid key exchange preferred).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}

/// A process's TLS: what its listening port presents and asks of clients, and what its links
/// (to nodes, to etcd) present and trust.
#[derive(Debug, Clone)]
pub struct Tls {
    /// The listening port's side.
    pub server: Arc<ServerTls>,
    /// The dialing side.
    pub client: Arc<ClientTls>,
}

impl Tls {
    /// Both, for [`watch`].
    pub fn reloadables(&self) -> Vec<Arc<dyn Reloadable>> {
        vec![self.server.clone(), self.client.clone()]
    }
}
