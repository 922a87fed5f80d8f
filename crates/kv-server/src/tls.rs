//! TLS for the client port, the raft port and forwarding, on rustls' ring provider.
//!
//! One cluster CA issues every node's certificate. The raft listener requires a client
//! certificate from it (mutual TLS), and the raft dialer and forwarding trust it alone,
//! so a certificate from any other issuer (a public CA's included) opens neither the raft
//! port nor a forwarded request. The client port accepts client certificates from the
//! cluster CA and an optional client CA; they authorize nothing by themselves and are
//! required only with `require_client_cert`. Peers are named by IP address (their
//! `raft_addr` and `client_addr`), so node certificates carry IP subject alternative
//! names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// Why the TLS configuration could not be built; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("{path}: {source}")]
    Refused {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("building the TLS configuration: {0}")]
    Build(String),
}

/// The TLS configurations of one node, built once at startup.
#[derive(Clone)]
pub struct Tls {
    /// The client port's: ALPN `http/1.1`, client certificates from the cluster CA or
    /// the client CA, required only if so configured.
    pub client_port: Arc<ServerConfig>,
    /// The raft listener's: a client certificate from the cluster CA is required.
    pub raft_listener: Arc<ServerConfig>,
    /// The raft dialer's: trusts the cluster CA alone and presents this node's
    /// certificate.
    pub raft_dialer: Arc<ClientConfig>,
    /// The cluster CA as read, for forwarding through reqwest.
    ca_pem: Vec<u8>,
    /// This node's certificate chain and key as read, for forwarding through reqwest.
    identity_pem: Vec<u8>,
}

impl Tls {
    /// Reads the files `config` names and builds the three configurations.
    pub fn load(config: &TlsConfig) -> Result<Self, TlsError> {
        let cert_pem = read(&config.cert_file)?;
        let key_pem = read(&config.key_file)?;
        let ca_pem = read(&config.ca_file)?;
        let chain = certificates(&config.cert_file, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            path: config.key_file.clone(),
            what: format!("no private key in it ({e})"),
        })?;
        let cluster = roots(&config.ca_file, &ca_pem, RootCertStore::empty())?;
        let clients = match &config.client_ca_file {
            Some(path) => roots(path, &read(path)?, cluster.clone())?,
            None => cluster.clone(),
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let build = |e: &dyn std::fmt::Display| TlsError::Build(e.to_string());
        let key_refused = |source| TlsError::Refused {
            path: config.key_file.clone(),
            source,
        };

        let verifier =
            WebPkiClientVerifier::builder_with_provider(clients.into(), provider.clone());
        let verifier = if config.require_client_cert {
            verifier
        } else {
            verifier.allow_unauthenticated()
        };
        let mut client_port = server_builder(&provider)?
            .with_client_cert_verifier(verifier.build().map_err(|e| build(&e))?)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(key_refused)?;
        client_port.alpn_protocols = vec![b"http/1.1".to_vec()];

        let peers = WebPkiClientVerifier::builder_with_provider(
            Arc::new(cluster.clone()),
            provider.clone(),
        )
        .build()
        .map_err(|e| build(&e))?;
        let raft_listener = server_builder(&provider)?
            .with_client_cert_verifier(peers)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(key_refused)?;

        let raft_dialer = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| build(&e))?
            .with_root_certificates(cluster)
            .with_client_auth_cert(chain, key)
            .map_err(key_refused)?;

        let mut identity_pem = cert_pem;
        identity_pem.push(b'\n');
        identity_pem.extend_from_slice(&key_pem);
        Ok(Self {
            client_port: Arc::new(client_port),
            raft_listener: Arc::new(raft_listener),
            raft_dialer: Arc::new(raft_dialer),
            ca_pem,
            identity_pem,
        })
    }

    /// `builder` set up to forward to the leader: https only, trusting the cluster CA
    /// alone (no public roots), presenting this node's certificate.
    pub fn forwarding(
        &self,
        builder: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, reqwest::Error> {
        let mut builder = builder.https_only(true).tls_built_in_root_certs(false);
        for ca in reqwest::Certificate::from_pem_bundle(&self.ca_pem)? {
            builder = builder.add_root_certificate(ca);
        }
        Ok(builder.identity(reqwest::Identity::from_pem(&self.identity_pem)?))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn server_builder(
    provider: &Arc<CryptoProvider>,
) -> Result<rustls::ConfigBuilder<ServerConfig, rustls::WantsVerifier>, TlsError> {
    ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Build(e.to_string()))
}

/// Every certificate in `pem`, read from `path`: at least one.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            what: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            what: "no certificate in it".into(),
        });
    }
    Ok(certs)
}

/// `store` with every CA certificate of `pem`, read from `path`, added.
fn roots(path: &Path, pem: &[u8], mut store: RootCertStore) -> Result<RootCertStore, TlsError> {
    for cert in certificates(path, pem)? {
        store.add(cert).map_err(|source| TlsError::Refused {
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(store)
}
