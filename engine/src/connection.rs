//! How the engine reaches a Redis: a URL and its [`TlsOptions`] become a `redis::Client`.
//!
//! TLS is chosen by the URL's scheme (`rediss://`); the options add what a URL cannot carry: a
//! CA file to trust instead of the system's roots, a client certificate and key for servers that
//! require one (`tls-auth-clients yes`), and an explicit opt-out of verification. The options are
//! one plain struct so that every kind of connection (a single node, the seeds of a Redis
//! Cluster; see `RedisTarget`) is built from the same settings. Files are read here, once, so a missing or
//! unreadable file is a configuration error at start, not a connection error at every retry.
//! Nothing here logs or returns the URL's password: errors name files and fields only.

use std::path::PathBuf;

use redis::{ConnectionAddr, IntoConnectionInfo};

use crate::error::{Error, Result};

/// TLS settings for `rediss://` URLs. The default (all empty) verifies the server against the
/// system's trusted roots, with no client certificate.
///
/// ```
/// use rivulet::connection::{TlsOptions, open};
///
/// let tls = TlsOptions { ca_file: Some("/etc/rivulet/redis-ca.pem".into()), ..TlsOptions::default() };
/// assert!(tls.validate().is_ok());
/// // A TLS option on a plain redis:// URL is a mistake, not silently ignored.
/// assert!(open("redis://127.0.0.1:6379", &tls).is_err());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificate(s) to trust instead of the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM file of a client certificate (chain), for mutual TLS. Needs `client_key`.
    pub client_cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key. Needs `client_cert`.
    pub client_key: Option<PathBuf>,
    /// Accept any server certificate: encrypts, but does not authenticate the server. For tests
    /// and emergencies only; binaries log a warning when it is on.
    pub insecure: bool,
}

impl TlsOptions {
    /// Whether any option is set (plain `redis://` URLs take none).
    pub fn is_set(&self) -> bool {
        *self != TlsOptions::default()
    }

    /// Checks the combination (files are read by [`open`]): a client certificate needs its key
    /// and the key its certificate; verifying against a CA file and not verifying at all
    /// contradict each other.
    pub fn validate(&self) -> Result<()> {
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => return Err(Error::config("tls.client_key", "a client certificate needs its key")),
            (None, Some(_)) => return Err(Error::config("tls.client_cert", "a client key needs its certificate")),
            _ => {}
        }
        if self.insecure && self.ca_file.is_some() {
            return Err(Error::config(
                "tls.insecure",
                "verification is off, so a CA file would be ignored: drop one of the two",
            ));
        }
        Ok(())
    }
}

/// A `redis::Client` for `url` with `tls` applied. Fails on a URL that does not parse (the
/// message never shows its password), on TLS options given with a non-TLS URL, and on a file
/// that cannot be read.
pub fn open(url: &str, tls: &TlsOptions) -> Result<redis::Client> {
    tls.validate()?;
    let info = url.into_connection_info()?;
    let ConnectionAddr::TcpTls {
        host, port, insecure, ..
    } = info.addr().clone()
    else {
        if tls.is_set() {
            return Err(Error::config(
                "tls",
                "TLS options need a rediss:// URL (the URL given is not TLS)",
            ));
        }
        return Ok(redis::Client::open(info)?);
    };
    let info = info.set_addr(ConnectionAddr::TcpTls {
        host,
        port,
        // `rediss://host/#insecure` in the URL also turns verification off.
        insecure: insecure || tls.insecure,
        tls_params: None,
    });
    let Some(certs) = certificates(tls)? else {
        return Ok(redis::Client::open(info)?);
    };
    redis::Client::build_with_tls(info, certs).map_err(not_pem)
}

/// The CA and client certificate files `tls` names, read (`None` when it names none).
pub(crate) fn certificates(tls: &TlsOptions) -> Result<Option<redis::TlsCertificates>> {
    if tls.ca_file.is_none() && tls.client_cert.is_none() {
        return Ok(None);
    }
    let read = |field: &'static str, path: &PathBuf| {
        std::fs::read(path).map_err(|e| Error::config(field, format!("cannot read {}: {e}", path.display())))
    };
    let root_cert = tls.ca_file.as_ref().map(|p| read("tls.ca_file", p)).transpose()?;
    let client_tls = match (&tls.client_cert, &tls.client_key) {
        (Some(cert), Some(key)) => Some(redis::ClientTlsConfig {
            client_cert: read("tls.client_cert", cert)?,
            client_key: read("tls.client_key", key)?,
        }),
        _ => None,
    };
    Ok(Some(redis::TlsCertificates { client_tls, root_cert }))
}

/// redis-rs reports a PEM file it cannot parse as an I/O error; say which setting.
pub(crate) fn not_pem(e: redis::RedisError) -> Error {
    Error::config("tls", format!("the CA, certificate or key file is not usable PEM: {e}"))
}

/// Whether `e` is a failed TLS handshake that verification caused (an unknown issuer, a name
/// mismatch, an expired certificate), so callers can say "check the CA file" rather than
/// "Redis is down".
pub fn is_certificate_error(e: &redis::RedisError) -> bool {
    let text = e.to_string();
    [
        "invalid peer certificate",
        "UnknownIssuer",
        "NotValidForName",
        "certificate",
    ]
    .iter()
    .any(|needle| text.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_urls_take_no_tls_options() {
        assert!(open("redis://127.0.0.1:6379", &TlsOptions::default()).is_ok());
        let e = open(
            "redis://u:secret@127.0.0.1:6379",
            &TlsOptions {
                insecure: true,
                ..TlsOptions::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("rediss://"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn half_a_client_identity_is_refused() {
        let cert_only = TlsOptions {
            client_cert: Some("c.pem".into()),
            ..TlsOptions::default()
        };
        assert!(matches!(
            cert_only.validate(),
            Err(Error::InvalidConfig {
                field: "tls.client_key",
                ..
            })
        ));
        let key_only = TlsOptions {
            client_key: Some("k.pem".into()),
            ..TlsOptions::default()
        };
        assert!(matches!(
            key_only.validate(),
            Err(Error::InvalidConfig {
                field: "tls.client_cert",
                ..
            })
        ));
        let both = TlsOptions {
            ca_file: Some("ca.pem".into()),
            insecure: true,
            ..TlsOptions::default()
        };
        assert!(both.validate().is_err());
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let tls = TlsOptions {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsOptions::default()
        };
        let e = open("rediss://:pw@127.0.0.1:6380", &tls).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidConfig { field: "tls.ca_file", reason } if reason.contains("/nonexistent/ca.pem")),
            "{e}"
        );
    }
}
