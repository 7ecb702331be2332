//! Certificates for TLS tests: a CA made fresh per test and the
//! certificates it signs for `127.0.0.1`, written as PEM files.

use std::path::Path;

use anyhow::Result;
use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SanType,
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
        self.issue_naming(cert, key, &[])
    }

    /// As [`TestCa::issue`], the certificate also naming `uris` (as a
    /// member's certificate names its node: `mpreg://<cluster>/<node>`).
    pub fn issue_naming(&self, cert: &Path, key: &Path, uris: &[&str]) -> Result<Vec<u8>> {
        let pair = KeyPair::generate()?;
        let mut params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])?;
        for uri in uris {
            params
                .subject_alt_names
                .push(SanType::URI(Ia5String::try_from(*uri)?));
        }
        let signed = params.signed_by(&pair, &self.issuer)?;
        std::fs::write(cert, signed.pem())?;
        std::fs::write(key, pair.serialize_pem())?;
        Ok(signed.der().to_vec())
    }
}
