//! TLS scenarios: a cluster with `[tls]` serves and forwards over https and replicates
//! over mutual TLS, and refuses plaintext and certificates from another CA on both ports.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use kv_tests::{make_certs, TestCluster, Tuning};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const HELLO: &[u8] = b"quorum-kv-raft/2\n";

async fn tls_cluster() -> Result<TestCluster> {
    let tuning = Tuning {
        tls: true,
        ..Tuning::default()
    };
    TestCluster::start_tuned(3, tuning).await
}

/// A raft frame: a big-endian length, then the bytes.
async fn send_frame(stream: &mut (impl AsyncWrite + Unpin), bytes: &[u8]) -> Result<()> {
    stream
        .write_all(&u32::try_from(bytes.len())?.to_be_bytes())
        .await?;
    stream.write_all(bytes).await?;
    stream.flush().await?;
    Ok(())
}

/// The next frame, or None when the node closed the connection (or broke it off).
async fn recv_frame(stream: &mut (impl AsyncRead + Unpin)) -> Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut len)).await?;
    if read.is_err() {
        return Ok(None);
    }
    let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
    if stream.read_exact(&mut frame).await.is_err() {
        return Ok(None);
    }
    Ok(Some(frame))
}

/// A TLS client that trusts the CA in `ca_dir` and presents `{identity}.pem` from
/// `identity_dir`, as a raft peer does.
fn peer_config(
    ca_dir: &Path,
    identity_dir: &Path,
    identity: &str,
) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(ca_dir.join("ca.pem"))?)?;
    let chain = vec![CertificateDer::from_pem_file(
        identity_dir.join(format!("{identity}.pem")),
    )?];
    let key = PrivateKeyDer::from_pem_file(identity_dir.join(format!("{identity}-key.pem")))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Dials `addr` over TLS with `config` and says hello with `secret`; returns the local
/// address dialed from and the node's answer to the hello (None if it broke off).
async fn hello_over_tls(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    secret: &[u8],
) -> Result<(SocketAddr, Option<Vec<u8>>)> {
    let tcp = TcpStream::connect(addr).await?;
    let local = tcp.local_addr()?;
    let name = ServerName::IpAddress(addr.ip().into());
    // With TLS 1.3 the client is done before the node has checked its certificate, so a
    // refusal may come at the handshake or at the first read.
    let Ok(mut tls) = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
    else {
        return Ok((local, None));
    };
    let hello = [HELLO, b"\n", secret].concat();
    if send_frame(&mut tls, &hello).await.is_err() {
        return Ok((local, None));
    }
    Ok((local, recv_frame(&mut tls).await?))
}

/// Waits until node `id` has logged a line with all of `words`.
async fn wait_logged(c: &TestCluster, id: u64, words: &[&str]) -> Result<()> {
    c.poll(&format!("node {id} logging {words:?}"), || async move {
        Ok(c.log_text(id)?
            .lines()
            .any(|l| words.iter().all(|w| l.contains(w))))
    })
    .await
}

#[tokio::test]
async fn a_tls_cluster_elects_and_forwards_a_write_over_https() -> Result<()> {
    let c = tls_cluster().await?;
    let leader = c.leader().await?;
    let follower = c.other_than(leader);
    ensure!(c.url(follower, "/").starts_with("https://"));
    // The follower forwards the write to the leader over https, presenting its own
    // certificate; reads on every node are linearizable, so they go to the leader too.
    let (status, body) = c.put_json(follower, "/v1/kv/over-tls", "\"yes\"").await?;
    ensure!(status == 200, "{status} {body}");
    for id in c.live() {
        let (status, got) = c.get_json(id, "/v1/kv/over-tls").await?;
        ensure!(
            status == 200 && got["value"] == "yes",
            "node {id}: {status} {got}"
        );
    }
    c.pass();
    Ok(())
}

#[tokio::test]
async fn the_client_port_refuses_plaintext_and_clients_trusting_another_ca() -> Result<()> {
    let c = tls_cluster().await?;
    let node = &c.nodes[0];
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?
        .get(format!("http://{}/healthz", node.client_addr))
        .send()
        .await;
    ensure!(plain.is_err(), "answered in plaintext: {plain:?}");

    let other = tempfile::tempdir()?;
    make_certs(other.path(), &[(1, node.client_addr.ip())], &[])?;
    let ca = std::fs::read(other.path().join("ca.pem"))?;
    let stranger = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&ca)?)
        .build()?;
    let refused = stranger.get(c.url(node.id, "/healthz")).send().await;
    ensure!(
        refused.is_err(),
        "a client trusting another CA accepted the node: {refused:?}"
    );

    let (status, _) = c.get_json(node.id, "/healthz").await?;
    ensure!(status == 200, "the cluster's own CA is trusted: {status}");
    c.pass();
    Ok(())
}

#[tokio::test]
async fn the_raft_port_refuses_another_cas_peers_and_plaintext_and_logs_them() -> Result<()> {
    let c = tls_cluster().await?;
    let tls_dir = c.tls_dir().context("the cluster's folder")?;
    let node = &c.nodes[0];

    // A peer whose certificate comes from another CA (it trusts the cluster's, so the
    // refusal is the node's): refused, and logged with its address.
    let other = tempfile::tempdir()?;
    make_certs(other.path(), &[(2, c.nodes[1].raft_addr.ip())], &[])?;
    let stranger = peer_config(&tls_dir, other.path(), "node2")?;
    let (from, answer) = hello_over_tls(node.raft_addr, stranger, b"test-secret").await?;
    ensure!(
        answer.is_none(),
        "another CA's peer was answered: {answer:?}"
    );
    wait_logged(&c, node.id, &["TLS handshake failed", &from.to_string()]).await?;

    // A plaintext hello, with the right secret: refused, and logged with its address.
    let mut plain = TcpStream::connect(node.raft_addr).await?;
    let from = plain.local_addr()?;
    send_frame(&mut plain, &[HELLO, b"\ntest-secret"].concat()).await?;
    let answer = recv_frame(&mut plain).await?;
    ensure!(
        answer.as_ref().is_none_or(|a| a.first() != Some(&0)),
        "a plaintext hello was accepted: {answer:?}"
    );
    wait_logged(&c, node.id, &["TLS handshake failed", &from.to_string()]).await?;

    // A member's certificate does not replace the secret: a wrong one is still refused
    // inside TLS, the right one accepted.
    let member = peer_config(&tls_dir, &tls_dir, "node2")?;
    let (_, answer) = hello_over_tls(node.raft_addr, member.clone(), b"wrong-secret").await?;
    let answer = answer.unwrap_or_default();
    ensure!(
        answer.first() == Some(&2) && answer.ends_with(b"wrong cluster secret"),
        "{:?}",
        String::from_utf8_lossy(&answer)
    );
    let (_, answer) = hello_over_tls(node.raft_addr, member, b"test-secret").await?;
    ensure!(
        answer.as_ref().and_then(|a| a.first()) == Some(&0),
        "a member's hello was refused: {answer:?}"
    );

    ensure!(
        c.leader().await.is_ok(),
        "the strangers disturbed the cluster"
    );
    c.pass();
    Ok(())
}
