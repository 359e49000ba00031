//! Handshakes over loopback TCP with certificates from two development CAs.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use goverse_tls::dev::{DevCa, Subject};
use goverse_tls::{
    ALPN_H2, ClientAuth, ClientFiles, ClientTls, Handshake, HandshakeError, Reloadable as _,
    ServerFiles, ServerTls, Verify,
};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const YEAR: Duration = Duration::from_secs(365 * 24 * 3600);

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// `ca` (the cluster's), `other-ca`, and from them: `server`, `client` (cluster CA), `stranger`
    /// (other CA), `expired` (cluster CA, expired yesterday).
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::generate("test cluster CA").unwrap();
        ca.write(dir.path()).unwrap();
        let local = vec!["127.0.0.1".to_owned(), "localhost".to_owned()];
        ca.issue(&Subject::new("server", local.clone(), YEAR).member("node/n1"))
            .unwrap()
            .write(dir.path(), "server")
            .unwrap();
        ca.issue(&Subject::new("client", local.clone(), YEAR).member("gate/g1"))
            .unwrap()
            .write(dir.path(), "client")
            .unwrap();
        let mut expired = Subject::new("old-node", local.clone(), YEAR);
        expired.not_before = SystemTime::now() - 2 * YEAR;
        expired.not_after = SystemTime::now() - Duration::from_secs(86_400);
        ca.issue(&expired)
            .unwrap()
            .write(dir.path(), "expired")
            .unwrap();
        let other = DevCa::generate("another CA").unwrap();
        std::fs::write(dir.path().join("other-ca.pem"), other.cert_pem()).unwrap();
        other
            .issue(&Subject::new("stranger", local, YEAR))
            .unwrap()
            .write(dir.path(), "stranger")
            .unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    fn server(&self, cert: &str, auth: ClientAuth) -> Arc<ServerTls> {
        ServerTls::load(
            "test",
            ServerFiles {
                cert: self.path(&format!("{cert}.pem")),
                key: self.path(&format!("{cert}-key.pem")),
                client_auth: auth,
            },
            ALPN_H2,
        )
        .unwrap()
    }

    fn client(&self, ca: &str, cert: Option<&str>) -> Arc<ClientTls> {
        ClientTls::load(
            "test client",
            ClientFiles {
                ca: Some(self.path(ca)),
                cert: cert.map(|c| self.path(&format!("{c}.pem"))),
                key: cert.map(|c| self.path(&format!("{c}-key.pem"))),
                verify: Verify::Full,
            },
            ALPN_H2,
        )
        .unwrap()
    }
}

/// One connection: the server's outcome (the client's certificate's name, or the error) and
/// the client's (an echo, or the error).
async fn connect(
    server: &Arc<ServerTls>,
    client: &Arc<ClientTls>,
    host: &str,
) -> (Result<Option<String>, String>, Result<(), String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = server.clone();
    let accepted = tokio::spawn(async move {
        let (io, remote) = listener.accept().await.unwrap();
        match server.accept(io, Some(remote)).await {
            Ok(Handshake::Tls(mut conn)) => {
                let peer = conn.info().peer.as_ref().map(|p| p.subject.clone());
                let mut buf = [0u8; 4];
                if conn.read_exact(&mut buf).await.is_ok() {
                    let _ = conn.write_all(&buf).await;
                    let _ = conn.flush().await;
                }
                Ok(peer)
            }
            Ok(Handshake::Plaintext(_)) => Err("plaintext".to_owned()),
            Err(err) => Err(err.to_string()),
        }
    });
    let address = format!("{host}:{port}");
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let dialed = async {
        let mut tls = client
            .connect(tcp, &address)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
        assert_eq!(&buf, b"ping");
        Ok(())
    }
    .await;
    let served = tokio::time::timeout(Duration::from_secs(5), accepted)
        .await
        .unwrap()
        .unwrap();
    (served, dialed)
}

#[tokio::test]
async fn mutual_tls_admits_the_cluster_and_names_each_refusal_on_both_sides() {
    let pki = Pki::new();
    let required = ClientAuth::Required(pki.path("ca.pem"));
    let server = pki.server("server", required.clone());

    let (served, dialed) =
        connect(&server, &pki.client("ca.pem", Some("client")), "127.0.0.1").await;
    assert_eq!(served, Ok(Some("client".to_owned())));
    assert_eq!(dialed, Ok(()));

    // No client certificate.
    let (served, dialed) = connect(&server, &pki.client("ca.pem", None), "127.0.0.1").await;
    assert!(served.unwrap_err().contains("presented no certificate"));
    let dialed = dialed.unwrap_err();
    assert!(dialed.contains("requires a client certificate"), "{dialed}");

    // A certificate of another CA.
    let (served, dialed) = connect(
        &server,
        &pki.client("ca.pem", Some("stranger")),
        "127.0.0.1",
    )
    .await;
    assert!(served.unwrap_err().contains("not signed by a trusted CA"));
    let dialed = dialed.unwrap_err();
    assert!(dialed.contains("does not trust our CA"), "{dialed}");

    // An expired certificate.
    let (served, dialed) =
        connect(&server, &pki.client("ca.pem", Some("expired")), "127.0.0.1").await;
    assert!(served.unwrap_err().contains("expired at"));
    let dialed = dialed.unwrap_err();
    assert!(dialed.contains("as expired"), "{dialed}");

    // A server of another CA, seen from the client.
    let stranger = pki.server("stranger", ClientAuth::None);
    let (_, dialed) = connect(
        &stranger,
        &pki.client("ca.pem", Some("client")),
        "127.0.0.1",
    )
    .await;
    assert!(dialed.unwrap_err().contains("not signed by a trusted CA"));

    // A server certificate that does not name the host dialed.
    let (_, dialed) = connect(
        &server,
        &pki.client("ca.pem", Some("client")),
        "node.example",
    )
    .await;
    assert!(dialed.unwrap_err().contains("does not name the address"));
}

#[tokio::test]
async fn a_plaintext_client_is_told_in_http_that_the_port_needs_tls() {
    let pki = Pki::new();
    let server = pki.server("server", ClientAuth::None);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (io, remote) = listener.accept().await.unwrap();
        match server.accept(io, Some(remote)).await {
            Ok(Handshake::Plaintext(io)) => {
                goverse_tls::refuse_plaintext(io, Duration::from_secs(5)).await;
            }
            other => panic!("{other:?}"),
        }
    });
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("accepts only TLS"), "{answer}");
}

#[tokio::test]
async fn a_silent_client_is_just_closed() {
    let pki = Pki::new();
    let server = pki.server("server", ClientAuth::None);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = tokio::spawn(async move {
        let (io, _) = listener.accept().await.unwrap();
        server.accept(io, None).await
    });
    drop(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    assert!(matches!(
        accepted.await.unwrap(),
        Err(HandshakeError::Closed)
    ));
}

fn copy(pki: &Pki, from: &str, to: &str) {
    for suffix in [".pem", "-key.pem"] {
        std::fs::copy(
            pki.path(&format!("{from}{suffix}")),
            pki.path(&format!("{to}{suffix}")),
        )
        .unwrap();
    }
}

#[tokio::test]
async fn a_reload_changes_the_certificate_of_new_connections_and_keeps_a_bad_file_out() {
    let pki = Pki::new();
    copy(&pki, "server", "live");
    let server = pki.server("live", ClientAuth::None);
    let client = pki.client("ca.pem", None);
    assert_eq!(connect(&server, &client, "127.0.0.1").await.1, Ok(()));

    // Nothing changed: nothing reloaded.
    assert!(!server.reload(false).unwrap());

    // The files now hold a stranger's certificate: reloaded, and clients of the cluster refuse it.
    copy(&pki, "stranger", "live");
    assert!(server.reload(false).unwrap());
    assert!(connect(&server, &client, "127.0.0.1").await.1.is_err());

    // A broken file is refused and the last good configuration stays.
    std::fs::write(pki.path("live.pem"), "not a certificate").unwrap();
    let err = server.reload(true).unwrap_err().to_string();
    assert!(
        err.contains("live.pem") && err.contains("no certificate"),
        "{err}"
    );
    assert!(connect(&server, &client, "127.0.0.1").await.1.is_err());

    copy(&pki, "server", "live");
    assert!(server.reload(false).unwrap());
    assert_eq!(connect(&server, &client, "127.0.0.1").await.1, Ok(()));
}
