//! Mutual TLS between nodes.
//!
//! With `[tls]` configured, the node reads its CA, certificate and key from
//! PEM files. Without it, a development CA is used: `<data_dir>/../dev-ca`
//! (shared by nodes whose data directories are siblings, as `meridian dev`
//! lays them out), created on first use, and the node's certificate is issued
//! from it at every start. Development CAs are for loopback clusters only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;

/// The name every node certificate carries and every client expects.
pub const SERVER_NAME: &str = "meridian-node";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("cannot write {path}: {cause}")]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot generate development certificates: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("invalid TLS setup: {0}")]
    Rustls(String),
}

/// A node's trust root and identity.
pub struct TlsMaterial {
    pub ca: CertificateDer<'static>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsMaterial {
    fn clone(&self) -> Self {
        TlsMaterial {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn read_err(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

impl TlsMaterial {
    pub fn load(cfg: &TlsConfig) -> Result<Self, TlsError> {
        let ca =
            CertificateDer::from_pem_file(&cfg.ca_cert).map_err(|e| read_err(&cfg.ca_cert, e))?;
        let chain = CertificateDer::pem_file_iter(&cfg.cert)
            .map_err(|e| read_err(&cfg.cert, e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| read_err(&cfg.cert, e))?;
        let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| read_err(&cfg.key, e))?;
        Ok(TlsMaterial { ca, chain, key })
    }

    /// Development material: issue a node certificate from the dev CA next
    /// to `data_dir`, creating the CA if no node has yet.
    pub fn dev(data_dir: &Path) -> Result<Self, TlsError> {
        let ca_dir = dev_ca_dir(data_dir);
        let (ca_pem, ca_key_pem) = ensure_dev_ca(&ca_dir)?;
        let ca_key = KeyPair::from_pem(&ca_key_pem)?;
        let issuer = ca_params().self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, SERVER_NAME);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let cert = params.signed_by(&key, &issuer, &ca_key)?;
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|e| read_err(&ca_dir.join("ca.pem"), e))?;
        Ok(TlsMaterial {
            ca,
            chain: vec![cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        })
    }

    pub fn load_or_dev(cfg: Option<&TlsConfig>, data_dir: &Path) -> Result<Self, TlsError> {
        match cfg {
            Some(c) => Self::load(c),
            None => Self::dev(data_dir),
        }
    }

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::ring::default_provider())
    }

    fn roots(&self) -> Result<rustls::RootCertStore, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| TlsError::Rustls(format!("CA certificate: {e}")))?;
        Ok(roots)
    }

    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(self.roots()?),
            Self::provider(),
        )
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))?;
        rustls::ServerConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Rustls(e.to_string()))
    }

    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        rustls::ClientConfig::builder_with_provider(Self::provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Rustls(e.to_string()))
    }
}

pub fn dev_ca_dir(data_dir: &Path) -> PathBuf {
    data_dir.parent().unwrap_or(Path::new(".")).join("dev-ca")
}

fn ca_params() -> CertificateParams {
    // Deterministic parameters: re-signing them with the CA key yields an
    // issuer whose name and key match the stored CA certificate.
    let mut p = CertificateParams::default();
    p.distinguished_name
        .push(DnType::CommonName, "Meridian development CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p
}

/// Returns the dev CA's certificate and key PEM, creating them if needed.
/// Several nodes may start at once: the CA is written to a temporary
/// directory and renamed into place, and a loser of that race reads the
/// winner's files.
pub fn ensure_dev_ca(dir: &Path) -> Result<(String, String), TlsError> {
    let cert_path = dir.join("ca.pem");
    let key_path = dir.join("ca.key");
    if !cert_path.exists() {
        let parent = dir.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(|cause| TlsError::Write {
            path: parent.to_path_buf(),
            cause,
        })?;
        let tmp = tempfile::tempdir_in(parent).map_err(|cause| TlsError::Write {
            path: parent.to_path_buf(),
            cause,
        })?;
        let key = KeyPair::generate()?;
        let cert = ca_params().self_signed(&key)?;
        let write = |name: &str, text: &str| {
            let p = tmp.path().join(name);
            std::fs::write(&p, text).map_err(|cause| TlsError::Write { path: p, cause })
        };
        write("ca.pem", &cert.pem())?;
        write("ca.key", &key.serialize_pem())?;
        let tmp_path = tmp.keep();
        if std::fs::rename(&tmp_path, dir).is_err() {
            // Another node won the race; use its CA.
            let _ = std::fs::remove_dir_all(&tmp_path);
        }
    }
    let cert = std::fs::read_to_string(&cert_path).map_err(|e| read_err(&cert_path, e))?;
    let key = std::fs::read_to_string(&key_path).map_err(|e| read_err(&key_path, e))?;
    Ok((cert, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sibling_nodes_share_one_dev_ca() {
        let dir = tempfile::tempdir().unwrap();
        let a = TlsMaterial::dev(&dir.path().join("node-1")).unwrap();
        let b = TlsMaterial::dev(&dir.path().join("node-2")).unwrap();
        assert_eq!(a.ca, b.ca);
        assert_ne!(a.chain[0], b.chain[0]);
        a.server_config().unwrap();
        b.client_config().unwrap();
    }
}
