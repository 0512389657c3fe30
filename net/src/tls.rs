//! TLS 1.3 for QUIC with no CA: a node's certificate is self-signed with its
//! ed25519 identity key, and a client accepts a server only if the handshake
//! signature verifies under the identity key the signed topology names.
//!
//! The certificate's contents are not trusted at all: the server proves it
//! holds the expected key by signing the TLS transcript, and we verify that
//! signature with the *expected* key, never the one the certificate claims.

use crate::Error;
use ed25519_dalek::SigningKey;
use protocol::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{
    CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, SubjectPublicKeyInfoDer,
    UnixTime,
};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;

/// ALPN protocol id of Umbra links.
pub const ALPN: &[u8] = b"umbra/1";
/// Server name used in the handshake; identity comes from the pinned key, not the name.
pub const SERVER_NAME: &str = "umbra.invalid";

const PKCS8_ED25519_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];
const SPKI_ED25519_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> Error {
    Error::Tls(e.to_string())
}

/// PKCS#8 v1 encoding of an ed25519 secret key (RFC 8410).
fn pkcs8(key: &SigningKey) -> Vec<u8> {
    let mut v = PKCS8_ED25519_PREFIX.to_vec();
    v.extend_from_slice(&key.to_bytes());
    v
}

/// SubjectPublicKeyInfo of an ed25519 public key (RFC 8410).
pub fn ed25519_spki(id: &NodeId) -> Vec<u8> {
    let mut v = SPKI_ED25519_PREFIX.to_vec();
    v.extend_from_slice(id);
    v
}

/// Largest UDP payload a link uses where the path allows it (jumbo frames).
pub(crate) const MAX_UDP_PAYLOAD: u16 = 8952;

fn transport(idle: Duration) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(0u8.into());
    t.max_concurrent_uni_streams(8u8.into());
    t.keep_alive_interval(Some(idle / 3));
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    // One packet stream per link; allow a deep window so a fast link is not
    // throttled by flow control on loopback or high-latency paths.
    t.stream_receive_window((4u32 * 1024 * 1024).into());
    t.receive_window((8u32 * 1024 * 1024).into());
    t.send_window(8 * 1024 * 1024);
    // Let path-MTU discovery go up to jumbo frames: where the path allows it
    // (data-centre links, loopback) a packet then costs one datagram instead
    // of two, halving per-datagram work. Internet paths stay at ~1500.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(MAX_UDP_PAYLOAD);
    t.mtu_discovery_config(Some(mtu));
    // BBR paces by measured bandwidth and RTT instead of halving its window
    // at every lost datagram: a link with random loss (radio, a congested
    // hop, an adversary dropping a share) keeps its throughput.
    t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
    Arc::new(t)
}

/// QUIC server config presenting a certificate self-signed by `identity`.
pub fn server_config(identity: &SigningKey) -> Result<quinn::ServerConfig, Error> {
    let der = pkcs8(identity);
    let key_pair = rcgen::KeyPair::from_pkcs8_der_and_sign_algo(
        &PrivatePkcs8KeyDer::from(der.clone()),
        &rcgen::PKCS_ED25519,
    )
    .map_err(tls_err)?;
    let cert = rcgen::CertificateParams::new(vec![SERVER_NAME.to_string()])
        .map_err(tls_err)?
        .self_signed(&key_pair)
        .map_err(tls_err)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(der)),
        )
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport(Duration::from_secs(30)));
    Ok(cfg)
}

/// QUIC client config that accepts only a server holding `expected`'s key.
pub fn client_config(expected: NodeId) -> Result<quinn::ClientConfig, Error> {
    let prov = provider();
    let verifier = PinnedKey {
        spki: ed25519_spki(&expected),
        algs: prov.signature_verification_algorithms,
    };
    let mut tls = rustls::ClientConfig::builder_with_provider(prov)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport(Duration::from_secs(30)));
    Ok(cfg)
}

#[derive(Debug)]
struct PinnedKey {
    spki: Vec<u8>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinnedKey {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Fail fast on the wrong node; the real proof is the signature below.
        if end_entity
            .as_ref()
            .windows(self.spki.len())
            .any(|w| w == self.spki.as_slice())
        {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        _cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature_with_raw_key(
            message,
            &SubjectPublicKeyInfoDer::from(self.spki.as_slice()),
            dss,
            &self.algs,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        vec![SignatureScheme::ED25519]
    }
}
