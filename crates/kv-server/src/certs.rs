//! `kv-server certs`: a cluster CA and node certificates (and optionally a clients CA and
//! client certificates), made with rcgen so that setting up TLS needs no OpenSSL.
//!
//! Files in the output folder (keys are written 0600):
//! - `ca.pem`, `ca-key.pem`: the cluster CA, reused when present, so nodes can be added
//!   or their certificates renewed without touching the others;
//! - `node{ID}.pem`, `node{ID}-key.pem`: each node's certificate, for TLS servers and
//!   clients alike, naming the node's IP addresses (and DNS names) as given;
//! - `clients-ca.pem`, `clients-ca-key.pem`, `client-{NAME}.pem`, `client-{NAME}-key.pem`:
//!   a separate CA for client certificates, so that they cannot open the raft port.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// The cluster CA's name; a reused CA key is given it again, so it must never change.
const CLUSTER_CA: &str = "quorum-kv cluster CA";
/// The clients CA's name, for the same reason.
const CLIENTS_CA: &str = "quorum-kv clients CA";
/// How long a CA is valid: its renewal means renewing every certificate it issued.
const CA_DAYS: i64 = 10 * 365;
/// How long a node or client certificate is valid.
const LEAF_DAYS: i64 = 2 * 365;

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Rcgen { what: String, source: rcgen::Error },
}

/// One node to certify: `ID=IP[,IP|DNS...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// The node's id, which names its files.
    pub id: u64,
    /// Its IP addresses and DNS names, as subject alternative names.
    pub names: Vec<String>,
}

impl FromStr for NodeSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let usage = || format!("{s:?}: expected ID=IP[,IP|DNS...], e.g. 1=10.0.0.1");
        let (id, names) = s.split_once('=').ok_or_else(usage)?;
        let id = id.trim().parse().map_err(|_| usage())?;
        let names: Vec<String> = names.split(',').map(|n| n.trim().to_owned()).collect();
        if names.iter().any(String::is_empty) {
            return Err(usage());
        }
        Ok(Self { id, names })
    }
}

/// Makes (or reuses) the CAs in `dir` and a certificate for every node and client;
/// returns the files written.
pub fn make(
    dir: &Path,
    nodes: &[NodeSpec],
    clients: &[String],
) -> Result<Vec<PathBuf>, CertsError> {
    if nodes.is_empty() && clients.is_empty() {
        return Err(CertsError::Invalid(
            "name at least one --node or --client".into(),
        ));
    }
    if let Some(bad) = clients.iter().find(|c| {
        c.is_empty()
            || !c
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    }) {
        return Err(CertsError::Invalid(format!(
            "client name {bad:?}: use letters, digits, '-' and '_' (it names files)"
        )));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let now = now()?;
    let mut written = Vec::new();
    let cluster = issuer(dir, "ca", CLUSTER_CA, now, &mut written)?;
    for node in nodes {
        let mut params = CertificateParams::new(node.names.clone())
            .map_err(rcgen(format!("node {}'s names {:?}", node.id, node.names)))?;
        params.distinguished_name = name(&format!("quorum-kv node {}", node.id));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaf(
            dir,
            &format!("node{}", node.id),
            params,
            &cluster,
            now,
            &mut written,
        )?;
    }
    if !clients.is_empty() {
        let issuer = issuer(dir, "clients-ca", CLIENTS_CA, now, &mut written)?;
        for client in clients {
            let mut params = CertificateParams::default();
            params.distinguished_name = name(client);
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            leaf(
                dir,
                &format!("client-{client}"),
                params,
                &issuer,
                now,
                &mut written,
            )?;
        }
    }
    Ok(written)
}

/// The CA `{stem}.pem` with its key `{stem}-key.pem` in `dir`: the existing one, rebuilt
/// from its key and its fixed name (so nothing has to parse its certificate), or a new one.
fn issuer(
    dir: &Path,
    stem: &str,
    common_name: &str,
    now: time::OffsetDateTime,
    written: &mut Vec<PathBuf>,
) -> Result<Issuer<'static, KeyPair>, CertsError> {
    let cert = dir.join(format!("{stem}.pem"));
    let key = dir.join(format!("{stem}-key.pem"));
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    // Path length 0: it signs node and client certificates, never another CA.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(CA_DAYS);
    match (cert.exists(), key.exists()) {
        (true, true) => {
            let pem = std::fs::read_to_string(&key).map_err(io(&key))?;
            let key_pair = KeyPair::from_pem(&pem).map_err(rcgen(key.display().to_string()))?;
            Ok(Issuer::new(params, key_pair))
        }
        (false, false) => {
            let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                .map_err(rcgen("generating a key".into()))?;
            let signed = params
                .self_signed(&key_pair)
                .map_err(rcgen(format!("signing {}", cert.display())))?;
            write(&key, &key_pair.serialize_pem(), true, written)?;
            write(&cert, &signed.pem(), false, written)?;
            Ok(Issuer::new(params, key_pair))
        }
        _ => Err(CertsError::Invalid(format!(
            "{} and {} go together, but only one of them is there",
            cert.display(),
            key.display()
        ))),
    }
}

/// Signs `params` with `issuer` under a new P-256 key and writes `{stem}.pem` and
/// `{stem}-key.pem`.
fn leaf(
    dir: &Path,
    stem: &str,
    mut params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
    now: time::OffsetDateTime,
    written: &mut Vec<PathBuf>,
) -> Result<(), CertsError> {
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(LEAF_DAYS);
    let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(rcgen("generating a key".into()))?;
    let cert = params
        .signed_by(&key_pair, issuer)
        .map_err(rcgen(format!("signing {stem}")))?;
    write(
        &dir.join(format!("{stem}-key.pem")),
        &key_pair.serialize_pem(),
        true,
        written,
    )?;
    write(
        &dir.join(format!("{stem}.pem")),
        &cert.pem(),
        false,
        written,
    )?;
    Ok(())
}

fn name(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name
}

fn now() -> Result<time::OffsetDateTime, CertsError> {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| CertsError::Invalid(format!("the clock is before 1970: {e}")))?;
    time::OffsetDateTime::from_unix_timestamp(since_epoch.as_secs() as i64)
        .map_err(|e| CertsError::Invalid(format!("the clock is out of range: {e}")))
}

/// Writes `contents` to `path`, readable by its owner alone if `private` (also when the
/// file was there before).
fn write(
    path: &Path,
    contents: &str,
    private: bool,
    written: &mut Vec<PathBuf>,
) -> Result<(), CertsError> {
    let mode = if private { 0o600 } else { 0o644 };
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io(path))?;
    file.write_all(contents.as_bytes()).map_err(io(path))?;
    file.sync_all().map_err(io(path))?;
    written.push(path.to_owned());
    Ok(())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.to_owned(),
        source,
    }
}

fn rcgen(what: String) -> impl FnOnce(rcgen::Error) -> CertsError {
    move |source| CertsError::Rcgen { what, source }
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use rustls::{ClientConfig, ServerConfig};
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::ServerName;
    use tokio_rustls::{TlsAcceptor, TlsConnector};

    use super::*;
    use crate::config::TlsConfig;
    use crate::tls::Tls;

    fn node(spec: &str) -> NodeSpec {
        spec.parse().expect("a node spec")
    }

    fn load(dir: &Path, id: u64, client_ca: bool) -> Tls {
        Tls::load(&TlsConfig {
            cert_file: dir.join(format!("node{id}.pem")),
            key_file: dir.join(format!("node{id}-key.pem")),
            ca_file: dir.join("ca.pem"),
            client_ca_file: client_ca.then(|| dir.join("clients-ca.pem")),
            require_client_cert: false,
        })
        .expect("the generated files load")
    }

    /// A TLS handshake over an in-memory pipe, the client calling the server `name`; both
    /// sides must succeed (with TLS 1.3 the client is done before the server has checked
    /// its certificate).
    async fn handshake(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
        name: IpAddr,
    ) -> Result<(), String> {
        let (a, b) = tokio::io::duplex(64 << 10);
        let accept = TlsAcceptor::from(server).accept(a);
        let connect = TlsConnector::from(client).connect(ServerName::IpAddress(name.into()), b);
        let (accepted, connected) = tokio::join!(accept, connect);
        connected.map_err(|e| format!("client: {e}"))?;
        accepted.map_err(|e| format!("server: {e}"))?;
        Ok(())
    }

    #[test]
    fn node_specs_parse_ids_and_names() {
        assert_eq!(
            node("3=10.0.0.3,::1,kv3.example"),
            NodeSpec {
                id: 3,
                names: vec!["10.0.0.3".into(), "::1".into(), "kv3.example".into()]
            }
        );
        for bad in ["3", "x=10.0.0.1", "3=", "3=10.0.0.1,"] {
            assert!(bad.parse::<NodeSpec>().is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn generated_certificates_load_and_keys_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = make(dir.path(), &[node("1=127.0.0.1")], &["app".into()]).expect("made");
        assert_eq!(written.len(), 8, "{written:?}");
        load(dir.path(), 1, true);
        for key in [
            "ca-key.pem",
            "node1-key.pem",
            "clients-ca-key.pem",
            "client-app-key.pem",
        ] {
            let mode = std::fs::metadata(dir.path().join(key))
                .expect("a key")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    #[tokio::test]
    async fn a_node_certificate_verifies_for_its_ip_address_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        make(dir.path(), &[node("1=127.0.0.1"), node("2=127.0.0.2")], &[]).expect("made");
        let (one, two) = (load(dir.path(), 1, false), load(dir.path(), 2, false));
        let ip = |s: &str| s.parse::<IpAddr>().expect("an address");
        handshake(
            one.raft_listener.clone(),
            two.raft_dialer.clone(),
            ip("127.0.0.1"),
        )
        .await
        .expect("node 2 dials node 1 at its address");
        let wrong = handshake(
            one.raft_listener.clone(),
            two.raft_dialer.clone(),
            ip("127.0.0.2"),
        )
        .await;
        assert!(
            wrong.expect_err("refused").contains("client"),
            "node 1's certificate names 127.0.0.1 only"
        );
        handshake(
            one.client_port.clone(),
            two.raft_dialer.clone(),
            ip("127.0.0.1"),
        )
        .await
        .expect("a peer's certificate is welcome on the client port");
    }

    #[tokio::test]
    async fn a_reused_ca_still_chains_and_another_ca_does_not() {
        let dir = tempfile::tempdir().expect("tempdir");
        make(dir.path(), &[node("1=127.0.0.1")], &[]).expect("made");
        let ca = std::fs::read(dir.path().join("ca.pem")).expect("ca.pem");
        make(dir.path(), &[node("2=127.0.0.1")], &[]).expect("made again");
        assert_eq!(
            std::fs::read(dir.path().join("ca.pem")).expect("ca.pem"),
            ca,
            "the CA is kept"
        );
        let (one, two) = (load(dir.path(), 1, false), load(dir.path(), 2, false));
        let localhost = IpAddr::from([127, 0, 0, 1]);
        handshake(
            one.raft_listener.clone(),
            two.raft_dialer.clone(),
            localhost,
        )
        .await
        .expect("node 2, certified by the reused CA, is a peer of node 1");
        handshake(
            two.raft_listener.clone(),
            one.raft_dialer.clone(),
            localhost,
        )
        .await
        .expect("and the other way round");

        let other = tempfile::tempdir().expect("tempdir");
        make(other.path(), &[node("1=127.0.0.1")], &["app".into()]).expect("made");
        let stranger = load(other.path(), 1, true);
        let refused = handshake(
            one.raft_listener.clone(),
            stranger.raft_dialer.clone(),
            localhost,
        )
        .await;
        assert!(refused.is_err(), "a node of another CA is no peer");
        let refused = handshake(
            one.client_port.clone(),
            stranger.raft_dialer.clone(),
            localhost,
        )
        .await;
        assert!(refused.is_err(), "nor a client of the client port");
    }

    #[tokio::test]
    async fn a_client_port_that_requires_certificates_still_takes_forwards_from_peers() {
        let dir = tempfile::tempdir().expect("tempdir");
        make(dir.path(), &[node("1=127.0.0.1"), node("2=127.0.0.1")], &[]).expect("made");
        let strict = Tls::load(&TlsConfig {
            cert_file: dir.path().join("node1.pem"),
            key_file: dir.path().join("node1-key.pem"),
            ca_file: dir.path().join("ca.pem"),
            client_ca_file: None,
            require_client_cert: true,
        })
        .expect("loads");
        let localhost = IpAddr::from([127, 0, 0, 1]);
        let peer = load(dir.path(), 2, false);
        handshake(
            strict.client_port.clone(),
            peer.raft_dialer.clone(),
            localhost,
        )
        .await
        .expect("a peer presents its certificate when it forwards");
        let mut roots = rustls::RootCertStore::empty();
        let ca = rustls_pki_types::CertificateDer::from_pem_file(dir.path().join("ca.pem"));
        roots.add(ca.expect("ca.pem")).expect("a CA");
        let anonymous =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
        let refused = handshake(strict.client_port.clone(), Arc::new(anonymous), localhost).await;
        assert!(
            refused.expect_err("refused").starts_with("server"),
            "a client without a certificate"
        );
    }

    #[tokio::test]
    async fn client_certificates_open_the_client_port_but_not_the_raft_port() {
        let dir = tempfile::tempdir().expect("tempdir");
        make(dir.path(), &[node("1=127.0.0.1")], &["app".into()]).expect("made");
        let server = load(dir.path(), 1, true);
        let client = Arc::new(
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates({
                    let mut roots = rustls::RootCertStore::empty();
                    let ca =
                        rustls_pki_types::CertificateDer::from_pem_file(dir.path().join("ca.pem"));
                    roots.add(ca.expect("ca.pem")).expect("a CA");
                    roots
                })
                .with_client_auth_cert(
                    vec![rustls_pki_types::CertificateDer::from_pem_file(
                        dir.path().join("client-app.pem"),
                    )
                    .expect("cert")],
                    rustls_pki_types::PrivateKeyDer::from_pem_file(
                        dir.path().join("client-app-key.pem"),
                    )
                    .expect("key"),
                )
                .expect("a client identity"),
        );
        let localhost = IpAddr::from([127, 0, 0, 1]);
        handshake(server.client_port.clone(), client.clone(), localhost)
            .await
            .expect("the client port takes a certificate of the clients CA");
        let refused = handshake(server.raft_listener.clone(), client, localhost).await;
        assert!(
            refused.expect_err("refused").starts_with("server"),
            "the raft port does not"
        );
    }
}
