//! The broker connection settings: client id, credentials, keep-alive, last will and (with the `mqtt-tls`
//! feature) TLS from the configured CA and client certificate, built once at start-up so every mistake in them
//! is reported before anything is published.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use rumqttc::{LastWill, MqttOptions, QoS};

use super::Message;
use crate::config::mqtt::MqttConfig;

/// Keep-alive: the broker publishes the last will about 1.5× this after the exporter stops answering.
pub const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Client options for `config`; `will` is published by the broker if the connection drops without a goodbye.
pub fn options(config: &MqttConfig, will: Option<&Message>) -> anyhow::Result<MqttOptions> {
    let mut options = MqttOptions::new(&config.client_id, &config.broker.host, config.broker.port);
    options.set_keep_alive(KEEP_ALIVE);
    // The largest message is a Pace bank's state: well under 64 KiB; discovery payloads are a few hundred bytes.
    options.set_max_packet_size(256 * 1024, 256 * 1024);
    if let Some(will) = will {
        options.set_last_will(LastWill::new(&will.topic, will.payload.clone(), qos(config.qos), will.retain));
    }
    if let Some(user) = &config.username {
        let password = match &config.password_file {
            Some(path) => read_password(path)?,
            None => String::new(),
        };
        options.set_credentials(user, password);
    } else if config.password_file.is_some() {
        bail!("mqtt.password_file is set but mqtt.username is not: the broker needs both");
    }
    if config.broker.tls {
        options.set_transport(tls::transport(config)?);
    }
    Ok(options)
}

/// The QoS for a configured level (anything but 0 is at-least-once: QoS 2 is refused by the config).
#[must_use]
pub fn qos(level: u8) -> QoS {
    if level == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce }
}

/// The first line of `path`, without its line ending.
pub fn read_password(path: &Path) -> anyhow::Result<String> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the MQTT password file {}", path.display()))?;
    let line = text.lines().next().unwrap_or_default();
    if line.is_empty() {
        bail!("the MQTT password file {} is empty", path.display());
    }
    Ok(line.to_owned())
}

#[cfg(feature = "mqtt-tls")]
mod tls {
    //! rustls client config with the ring provider (the one the web server uses).

    use std::path::Path;
    use std::sync::Arc;

    use anyhow::{Context as _, bail};
    use rumqttc::{TlsConfiguration, Transport};
    use rustls_pki_types::pem::PemObject as _;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

    use crate::config::mqtt::MqttConfig;

    /// A TLS transport verifying the broker against the CA file (or the system roots without one).
    pub(super) fn transport(config: &MqttConfig) -> anyhow::Result<Transport> {
        let mut roots = RootCertStore::empty();
        if let Some(path) = &config.tls.ca_file {
            for cert in certificates(path)? {
                roots.add(cert).with_context(|| format!("adding a CA certificate from {}", path.display()))?;
            }
        } else {
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                // A system store may hold certificates rustls cannot use; the rest still verify.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                bail!("no system CA certificates found for mqtts://; set mqtt.ca_file");
            }
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_root_certificates(roots);
        let client = match (&config.tls.cert_file, &config.tls.key_file) {
            (Some(cert), Some(key)) => {
                let chain = certificates(cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("reading the MQTT client key {}", key.display()))?;
                builder.with_client_auth_cert(chain, key).context("the MQTT client certificate and key")?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => bail!("mqtt.cert_file and mqtt.key_file go together"),
        };
        Ok(Transport::tls_with_config(TlsConfiguration::Rustls(Arc::new(client))))
    }

    fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let certs: Vec<_> = CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading certificates from {}", path.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("parsing certificates in {}", path.display()))?;
        if certs.is_empty() {
            bail!("{} holds no PEM certificate", path.display());
        }
        Ok(certs)
    }
}

#[cfg(not(feature = "mqtt-tls"))]
mod tls {
    //! Without the `mqtt-tls` feature, `mqtts://` is refused with a clear message.

    use crate::config::mqtt::MqttConfig;

    pub(super) fn transport(_config: &MqttConfig) -> anyhow::Result<rumqttc::Transport> {
        anyhow::bail!("this build has no MQTT TLS (built without the mqtt-tls feature); use mqtt:// or rebuild")
    }
}
