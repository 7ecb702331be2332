//! Certificates for TLS tests: a CA made fresh per test and the
//! certificates it signs for `127.0.0.1`, written as PEM files.

use std::path::Path;

use anyhow::Result;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// A certificate authority of one test.
pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> Result<TestCa> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Ok(TestCa {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    /// Writes the CA's certificate (what clients trust) to `path`.
    pub fn write_ca(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.issuer.pem())?;
        Ok(())
    }

    /// Signs a new certificate for `127.0.0.1` and `localhost`, writes it
    /// and its key to `cert` and `key`; its DER, to recognise it.
    pub fn issue(&self, cert: &Path, key: &Path) -> Result<Vec<u8>> {
        let pair = KeyPair::generate()?;
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        let signed = params.signed_by(&pair, &self.issuer)?;
        std::fs::write(cert, signed.pem())?;
        std::fs::write(key, pair.serialize_pem())?;
        Ok(signed.der().to_vec())
    }
}
