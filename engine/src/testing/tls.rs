//! A private `redis-server` that speaks TLS only, with certificates the test makes (`rcgen`).
//!
//! [`TestCerts`] is a throwaway CA with a server certificate for `127.0.0.1`/`localhost`, a
//! client certificate, and a second, unrelated CA (to show that a wrong CA is refused), all as
//! PEM files in a temp dir. [`TlsRedis`] runs `redis-server --port 0 --tls-port P` with them,
//! optionally requiring client certificates (`--tls-auth-clients yes`).

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use super::RedisServer;
use crate::connection::TlsOptions;

/// PEM files of a throwaway PKI, removed on drop.
#[derive(Debug)]
pub struct TestCerts {
    dir: PathBuf,
}

impl TestCerts {
    /// Makes a CA, a server certificate for `127.0.0.1` and `localhost`, a client certificate
    /// (both signed by the CA), and an unrelated second CA.
    pub fn generate() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rivulet-certs-{}-{:08x}",
            std::process::id(),
            fastrand::u32(..)
        ));
        std::fs::create_dir_all(&dir).expect("the temp dir is writable");
        let certs = TestCerts { dir };
        let (ca_pem, ca) = certificate_authority("rivulet test CA");
        certs.write("ca.pem", &ca_pem);
        let (other_pem, _) = certificate_authority("some other CA");
        certs.write("other-ca.pem", &other_pem);
        for (name, sans, usage) in [
            (
                "server",
                vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            (
                "client",
                vec!["rivulet-client".to_owned()],
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
        ] {
            let mut params = CertificateParams::new(sans).expect("the names are valid SANs");
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().expect("ring generates a key");
            let cert = params.signed_by(&key, &ca).expect("the CA signs");
            certs.write(&format!("{name}.pem"), &cert.pem());
            certs.write(&format!("{name}.key"), &key.serialize_pem());
        }
        certs
    }

    fn write(&self, name: &str, pem: &str) {
        std::fs::write(self.dir.join(name), pem).expect("the temp dir is writable");
    }

    /// The CA that signed the server's and the client's certificates.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that signed nothing here: trusting it alone must fail the handshake.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    /// The server's certificate and key.
    pub fn server(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("server.pem"), self.dir.join("server.key"))
    }

    /// The client's certificate and key (for mutual TLS).
    pub fn client(&self) -> (PathBuf, PathBuf) {
        (self.dir.join("client.pem"), self.dir.join("client.key"))
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn certificate_authority(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("no SANs is valid");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate().expect("ring generates a key");
    let cert = params.self_signed(&key).expect("a CA signs itself");
    (cert.pem(), Issuer::new(params, key))
}

/// A TLS-only `redis-server` owned by a test; killed on drop.
#[derive(Debug)]
pub struct TlsRedis {
    // Dropped first: the server stops before its certificate files go.
    server: RedisServer,
    certs: TestCerts,
}

impl TlsRedis {
    /// A TLS server that does not ask for client certificates.
    pub fn start() -> Self {
        Self::start_with(false, &[])
    }

    /// A TLS server that refuses clients without a certificate signed by its CA.
    pub fn start_mutual() -> Self {
        Self::start_with(true, &[])
    }

    /// A TLS server with extra `redis-server` arguments.
    pub fn start_with(client_certs: bool, extra: &[&str]) -> Self {
        let certs = TestCerts::generate();
        let (cert, key) = certs.server();
        let ca = certs.ca();
        let paths = [cert, key, ca].map(|p| p.to_str().expect("temp paths are UTF-8").to_owned());
        let mut args: Vec<&str> = vec![
            "--tls-cert-file",
            &paths[0],
            "--tls-key-file",
            &paths[1],
            "--tls-ca-cert-file",
            &paths[2],
            "--tls-auth-clients",
            if client_certs { "yes" } else { "no" },
        ];
        args.extend_from_slice(extra);
        let server = RedisServer::start_in_mode(&args, true);
        TlsRedis { server, certs }
    }

    /// `rediss://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The certificates the server uses.
    pub fn certs(&self) -> &TestCerts {
        &self.certs
    }

    /// Options that trust the server's CA (no client certificate).
    pub fn tls(&self) -> TlsOptions {
        TlsOptions {
            ca_file: Some(self.certs.ca()),
            ..TlsOptions::default()
        }
    }

    /// Options that trust the server's CA and present the client certificate.
    pub fn mutual_tls(&self) -> TlsOptions {
        let (cert, key) = self.certs.client();
        TlsOptions {
            ca_file: Some(self.certs.ca()),
            client_cert: Some(cert),
            client_key: Some(key),
            insecure: false,
        }
    }

    /// A `redis::Client` that trusts the server's CA and presents the client certificate (the
    /// server accepts it either way).
    pub fn client(&self) -> redis::Client {
        crate::connection::open(&self.url(), &self.mutual_tls()).expect("the test's own certificates load")
    }

    /// The underlying server (its log, its pid).
    pub fn server(&self) -> &RedisServer {
        &self.server
    }
}
