//! `--web.config.file`: the exporter-toolkit web configuration (the format node_exporter reads), parsed in two
//! stages. Raw structs mirror the YAML (serde-saphyr; unknown keys are errors, and the exporter-toolkit keys this
//! exporter does not implement are rejected by name rather than silently ignored); [`WebConfig::load`] then
//! resolves them into a ready rustls `ServerConfig`, a basic-auth user table and a header list, at start-up and
//! again whenever one of its files changes (see `live.rs`, which uses [`WebConfig::files_digest`]).
//! Relative file names are taken from the web config file's directory, as exporter-toolkit does. No sockets here.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr as _;
use std::sync::Arc;

use axum::http::{HeaderName, HeaderValue};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use serde::de::{self, Deserializer};
use serde_saphyr::{Location, Spanned};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig, SupportedProtocolVersion};

use super::auth::BasicAuth;

/// A resolved web configuration: what [`serve`](super::serve) needs to add TLS, basic auth and
/// response headers around the caller's routes.
#[derive(Clone)]
pub struct WebConfig {
    path: PathBuf,
    /// Every file it was built from: itself, then the certificate, key and client CA files it names.
    files: Arc<[PathBuf]>,
    tls: Option<Arc<ServerConfig>>,
    auth: Option<Arc<BasicAuth>>,
    headers: Arc<[(HeaderName, HeaderValue)]>,
}

/// Why a web configuration file cannot be used; every variant names the file, and the key where one applies.
#[derive(Debug, thiserror::Error)]
pub enum WebConfigError {
    /// The file itself could not be read.
    #[error("web config {}: cannot read it: {cause}", path.display())]
    Read {
        /// The web config file.
        path: PathBuf,
        /// What the operating system said.
        cause: std::io::Error,
    },
    /// The YAML is malformed, has an unknown or unsupported key, or a value of the wrong kind (serde-saphyr's
    /// message carries the line and column).
    #[error("web config {}: {message}", path.display())]
    Parse {
        /// The web config file.
        path: PathBuf,
        /// serde-saphyr's message, with line, column and snippet.
        message: String,
    },
    /// A well-formed value that cannot be used: a missing or unreadable certificate, a bad PEM, a hash that is
    /// not bcrypt, a header that may not be set.
    #[error("web config {}{}: {key}: {reason}", path.display(), At(*line, *column))]
    Invalid {
        /// The web config file.
        path: PathBuf,
        /// 1-based line of the offending value, 0 when unknown.
        line: u64,
        /// 1-based column of the offending value, 0 when unknown.
        column: u64,
        /// The key path, such as `tls_server_config.key_file`.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// `:line:column` after a file name, or nothing when the place is unknown.
struct At(u64, u64);

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 { Ok(()) } else { write!(f, ":{}:{}", self.0, self.1) }
    }
}

impl fmt::Debug for WebConfig {
    // Hand-written so the bcrypt hashes and key material never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebConfig")
            .field("path", &self.path)
            .field("files", &self.files)
            .field("tls", &self.tls.is_some())
            .field("basic_auth_users", &self.auth.as_ref().map_or(0, |a| a.user_count()))
            .field("headers", &self.headers.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

impl WebConfig {
    /// Read and resolve a web configuration file, loading every certificate and key it names.
    pub fn load(path: &Path) -> Result<Self, WebConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|cause| WebConfigError::Read { path: path.to_owned(), cause })?;
        Self::from_yaml(&text, path)
    }

    /// Resolve the YAML `text` of the web configuration file at `path` (used for messages and as the base of
    /// relative file names).
    pub fn from_yaml(text: &str, path: &Path) -> Result<Self, WebConfigError> {
        let ctx = Ctx { path, dir: path.parent().unwrap_or(Path::new("")) };
        let raw = parse(text).map_err(|message| WebConfigError::Parse {
            // serde-saphyr's snippet names its input `<input>`; name the file instead, and drop its hint that is
            // meant for programmers.
            message: message
                .replace("<input>", &path.display().to_string())
                .replace(", set DuplicateKeyPolicy in Options if acceptable", ""),
            path: path.to_owned(),
        })?;
        let tls = match &raw.tls_server_config {
            Some(section) => resolve_tls(&ctx, section)?,
            None => None,
        };
        let auth = resolve_users(&ctx, raw.basic_auth_users.unwrap_or_default())?;
        let headers = match &raw.http_server_config {
            Some(http) => resolve_headers(&ctx, http)?,
            None => Vec::new(),
        };
        let mut files = vec![path.to_owned()];
        if let Some(section) = &raw.tls_server_config {
            let named = [&section.value.cert_file, &section.value.key_file, &section.value.client_ca_file];
            files.extend(named.into_iter().filter_map(|f| given(f.as_ref())).map(|f| ctx.resolve(&f.value)));
        }
        Ok(Self { path: path.to_owned(), files: files.into(), tls, auth, headers: headers.into() })
    }

    /// The file this configuration came from.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A digest of the current content of every file this configuration was built from (a file that cannot be
    /// read counts as its error): when it differs from the digest taken at load time, a file has changed.
    #[must_use]
    pub fn files_digest(&self) -> u64 {
        use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
        BuildHasherDefault::<DefaultHasher>::default()
            .hash_one(self.files.iter().map(|f| std::fs::read(f).map_err(|e| e.kind())).collect::<Vec<_>>())
    }

    /// Whether connections must speak TLS.
    #[must_use]
    pub fn tls_enabled(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether every request needs basic-auth credentials.
    #[must_use]
    pub fn basic_auth_enabled(&self) -> bool {
        self.auth.is_some()
    }

    pub(crate) fn files(&self) -> &[PathBuf] {
        &self.files
    }

    pub(crate) fn tls(&self) -> Option<Arc<ServerConfig>> {
        self.tls.clone()
    }

    pub(crate) fn auth(&self) -> Option<Arc<BasicAuth>> {
        self.auth.clone()
    }

    pub(crate) fn headers(&self) -> Arc<[(HeaderName, HeaderValue)]> {
        Arc::clone(&self.headers)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Stage 1: the YAML as written.

/// The whole file. Every exporter-toolkit key is listed so an unsupported one gets its own message.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    tls_server_config: Option<Spanned<RawTls>>,
    #[serde(default)]
    http_server_config: Option<RawHttp>,
    #[serde(default)]
    basic_auth_users: Option<BTreeMap<String, Spanned<String>>>,
    #[serde(default, deserialize_with = "reject_rate_limit")]
    #[expect(dead_code, reason = "present only to be rejected by name")]
    rate_limit: Option<()>,
    #[serde(default, deserialize_with = "reject_auth_excluded_paths")]
    #[expect(dead_code, reason = "present only to be rejected by name")]
    auth_excluded_paths: Option<()>,
    #[serde(default, deserialize_with = "reject_ip_socket_config")]
    #[expect(dead_code, reason = "present only to be rejected by name")]
    ip_socket_config: Option<()>,
}

/// `tls_server_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default)]
    cert: Option<Spanned<String>>,
    #[serde(default)]
    key: Option<Spanned<String>>,
    #[serde(default)]
    client_ca: Option<Spanned<String>>,
    #[serde(default)]
    cert_file: Option<Spanned<String>>,
    #[serde(default)]
    key_file: Option<Spanned<String>>,
    #[serde(default)]
    client_auth_type: Option<Spanned<ClientAuth>>,
    #[serde(default)]
    client_ca_file: Option<Spanned<String>>,
    #[serde(default)]
    min_version: Option<Spanned<TlsVersion>>,
    #[serde(default)]
    max_version: Option<Spanned<TlsVersion>>,
    #[serde(default)]
    prefer_server_cipher_suites: Option<bool>,
    #[serde(default, deserialize_with = "reject_cipher_suites")]
    #[expect(dead_code, reason = "present only to be rejected by name")]
    cipher_suites: Option<()>,
    #[serde(default, deserialize_with = "reject_curve_preferences")]
    #[expect(dead_code, reason = "present only to be rejected by name")]
    curve_preferences: Option<()>,
    #[serde(default, deserialize_with = "reject_client_allowed_sans")]
    #[expect(dead_code, reason = "present only to be rejected by name")]
    client_allowed_sans: Option<()>,
}

/// `http_server_config`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    /// Accepted for compatibility and ignored: this server speaks HTTP/1.1 only, which every scraper accepts.
    #[serde(default)]
    #[expect(dead_code, reason = "accepted and ignored")]
    http2: Option<bool>,
    #[serde(default)]
    headers: Option<BTreeMap<String, Spanned<String>>>,
}

/// Defines a `deserialize_with` function that refuses a known exporter-toolkit key, so the error (with
/// serde-saphyr's line and column) says "not supported" instead of "unknown field".
macro_rules! reject {
    ($fn_name:ident, $key:literal, $why:literal) => {
        fn $fn_name<'de, D: Deserializer<'de>>(_: D) -> Result<Option<()>, D::Error> {
            Err(de::Error::custom(concat!($key, " is not supported by bms_exporter: ", $why)))
        }
    };
}

reject!(reject_rate_limit, "rate_limit", "put a reverse proxy in front if you need rate limiting");
reject!(reject_auth_excluded_paths, "auth_excluded_paths", "basic auth applies to every path");
reject!(reject_ip_socket_config, "ip_socket_config", "socket options are left to the operating system");
reject!(
    reject_cipher_suites,
    "tls_server_config.cipher_suites",
    "rustls offers only modern AEAD suites; remove the key"
);
reject!(
    reject_curve_preferences,
    "tls_server_config.curve_preferences",
    "rustls chooses among X25519, P-256 and P-384; remove the key"
);
reject!(
    reject_client_allowed_sans,
    "tls_server_config.client_allowed_sans",
    "client certificates are verified against client_ca_file only"
);

/// `client_auth_type`, limited to the policies that verify what they accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    NoClientCert,
    VerifyClientCertIfGiven,
    RequireAndVerifyClientCert,
}

impl<'de> Deserialize<'de> for ClientAuth {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "" | "NoClientCert" => Ok(Self::NoClientCert),
            "VerifyClientCertIfGiven" => Ok(Self::VerifyClientCertIfGiven),
            "RequireAndVerifyClientCert" => Ok(Self::RequireAndVerifyClientCert),
            "RequestClientCert" | "RequireAnyClientCert" | "RequireClientCert" => Err(de::Error::custom(format!(
                "tls_server_config.client_auth_type {name} is not supported by bms_exporter: it accepts client \
                 certificates without verifying them; use RequireAndVerifyClientCert with client_ca_file"
            ))),
            other => Err(de::Error::custom(format!(
                "tls_server_config.client_auth_type: unknown value {other:?}; expected NoClientCert, \
                 VerifyClientCertIfGiven or RequireAndVerifyClientCert"
            ))),
        }
    }
}

/// `min_version` / `max_version`; rustls implements TLS 1.2 and 1.3 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TlsVersion {
    Tls12,
    Tls13,
}

impl<'de> Deserialize<'de> for TlsVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "TLS12" => Ok(Self::Tls12),
            "TLS13" => Ok(Self::Tls13),
            "TLS10" | "TLS11" => Err(de::Error::custom(format!(
                "TLS version {name} is not supported by bms_exporter (rustls speaks TLS12 and TLS13 only)"
            ))),
            other => Err(de::Error::custom(format!("unknown TLS version {other:?}; expected TLS12 or TLS13"))),
        }
    }
}

/// Parse the YAML into the raw structs; an empty file (or one holding only comments) is an empty config, as in
/// exporter-toolkit.
fn parse(text: &str) -> Result<RawConfig, String> {
    let meaningful = text.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#') && l != "---"
    });
    if !meaningful {
        return Ok(RawConfig::default());
    }
    serde_saphyr::from_str::<Option<RawConfig>>(text).map(Option::unwrap_or_default).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------------------------
// Stage 2: resolved once, with files read.

/// The file being resolved, for messages and relative names.
struct Ctx<'a> {
    path: &'a Path,
    dir: &'a Path,
}

impl Ctx<'_> {
    fn invalid(&self, at: Location, key: impl Into<String>, reason: impl Into<String>) -> WebConfigError {
        WebConfigError::Invalid {
            path: self.path.to_owned(),
            line: at.line(),
            column: at.column(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    /// A file name from the config, relative to the config file's directory unless absolute.
    fn resolve(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Where a PEM document comes from: inline in the YAML or a file it names.
enum PemSource<'a> {
    Inline(&'a Spanned<String>, &'static str),
    File(&'a Spanned<String>, &'static str),
}

impl PemSource<'_> {
    fn key(&self) -> String {
        match self {
            Self::Inline(_, k) | Self::File(_, k) => format!("tls_server_config.{k}"),
        }
    }

    fn at(&self) -> Location {
        match self {
            Self::Inline(v, _) | Self::File(v, _) => v.referenced,
        }
    }

    fn read(&self, ctx: &Ctx<'_>) -> Result<Vec<u8>, WebConfigError> {
        match self {
            Self::Inline(text, _) => Ok(text.value.as_bytes().to_vec()),
            Self::File(name, _) => {
                let file = ctx.resolve(&name.value);
                std::fs::read(&file)
                    .map_err(|e| ctx.invalid(self.at(), self.key(), format!("cannot read {}: {e}", file.display())))
            }
        }
    }
}

/// A non-empty string value; exporter-toolkit treats `""` as unset.
fn given(v: Option<&Spanned<String>>) -> Option<&Spanned<String>> {
    v.filter(|s| !s.value.trim().is_empty())
}

/// Exactly one of the inline key and the file key; `None` when neither is given.
fn one_of<'a>(
    ctx: &Ctx<'_>,
    inline: (Option<&'a Spanned<String>>, &'static str),
    file: (Option<&'a Spanned<String>>, &'static str),
) -> Result<Option<PemSource<'a>>, WebConfigError> {
    match (given(inline.0), given(file.0)) {
        (Some(_), Some(f)) => Err(ctx.invalid(
            f.referenced,
            format!("tls_server_config.{}", file.1),
            format!("give {} or {}, not both", inline.1, file.1),
        )),
        (Some(i), None) => Ok(Some(PemSource::Inline(i, inline.1))),
        (None, Some(f)) => Ok(Some(PemSource::File(f, file.1))),
        (None, None) => Ok(None),
    }
}

fn load_certs(ctx: &Ctx<'_>, src: &PemSource<'_>) -> Result<Vec<CertificateDer<'static>>, WebConfigError> {
    let pem = src.read(ctx)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ctx.invalid(src.at(), src.key(), format!("not a valid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(ctx.invalid(src.at(), src.key(), "no \"BEGIN CERTIFICATE\" block found"));
    }
    Ok(certs)
}

fn load_key(ctx: &Ctx<'_>, src: &PemSource<'_>) -> Result<PrivateKeyDer<'static>, WebConfigError> {
    let pem = src.read(ctx)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => ctx.invalid(
            src.at(),
            src.key(),
            "no private key block (\"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\") found",
        ),
        other => ctx.invalid(src.at(), src.key(), format!("not a valid PEM private key: {other}")),
    })
}

/// Build the rustls configuration, or `None` when the section configures no TLS at all (exporter-toolkit then
/// serves plain HTTP, basic auth still applying).
fn resolve_tls(ctx: &Ctx<'_>, section: &Spanned<RawTls>) -> Result<Option<Arc<ServerConfig>>, WebConfigError> {
    let raw = &section.value;
    let here = section.referenced;
    let client_auth = raw.client_auth_type.as_ref();
    let cert = one_of(ctx, (raw.cert.as_ref(), "cert"), (raw.cert_file.as_ref(), "cert_file"))?;
    let key = one_of(ctx, (raw.key.as_ref(), "key"), (raw.key_file.as_ref(), "key_file"))?;
    let ca = one_of(ctx, (raw.client_ca.as_ref(), "client_ca"), (raw.client_ca_file.as_ref(), "client_ca_file"))?;
    if cert.is_none() && key.is_none() && ca.is_none() && client_auth.is_none() {
        return Ok(None);
    }
    let cert = cert.ok_or_else(|| ctx.invalid(here, "tls_server_config", "cert_file (or cert) is missing"))?;
    let key = key.ok_or_else(|| ctx.invalid(here, "tls_server_config", "key_file (or key) is missing"))?;
    let certs = load_certs(ctx, &cert)?;
    let key_der = load_key(ctx, &key)?;

    let min = raw.min_version.as_ref().map_or(TlsVersion::Tls12, |v| v.value);
    let max = raw.max_version.as_ref().map_or(TlsVersion::Tls13, |v| v.value);
    if min > max {
        let at = raw.min_version.as_ref().map_or(here, |v| v.referenced);
        return Err(ctx.invalid(at, "tls_server_config.min_version", "is above max_version"));
    }
    let versions: Vec<&'static SupportedProtocolVersion> =
        [(TlsVersion::Tls12, &rustls::version::TLS12), (TlsVersion::Tls13, &rustls::version::TLS13)]
            .into_iter()
            .filter(|(v, _)| (min..=max).contains(v))
            .map(|(_, p)| p)
            .collect();

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&versions)
        .map_err(|e| ctx.invalid(here, "tls_server_config", format!("rustls refused the TLS versions: {e}")))?;

    let policy = client_auth.map_or(ClientAuth::NoClientCert, |c| c.value);
    let builder = match (policy, ca) {
        (ClientAuth::NoClientCert, None) => builder.with_no_client_auth(),
        (ClientAuth::NoClientCert, Some(ca)) => {
            return Err(ctx.invalid(
                ca.at(),
                ca.key(),
                "a client CA is set but client_auth_type is NoClientCert; set client_auth_type: \
                 RequireAndVerifyClientCert or remove the CA",
            ));
        }
        (_, None) => {
            let at = client_auth.map_or(here, |c| c.referenced);
            return Err(ctx.invalid(
                at,
                "tls_server_config.client_auth_type",
                "verifying client certificates needs client_ca_file (or client_ca)",
            ));
        }
        (policy, Some(ca)) => {
            let mut roots = RootCertStore::empty();
            for der in load_certs(ctx, &ca)? {
                roots
                    .add(der)
                    .map_err(|e| ctx.invalid(ca.at(), ca.key(), format!("not a usable CA certificate: {e}")))?;
            }
            let mut verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
            if policy == ClientAuth::VerifyClientCertIfGiven {
                verifier = verifier.allow_unauthenticated();
            }
            let verifier = verifier
                .build()
                .map_err(|e| ctx.invalid(ca.at(), ca.key(), format!("cannot verify clients with it: {e}")))?;
            builder.with_client_cert_verifier(verifier)
        }
    };

    let mut config = builder.with_single_cert(certs, key_der).map_err(|e| {
        ctx.invalid(
            key.at(),
            format!("{} and {}", cert.key(), key.key()),
            format!("the certificate and key cannot be used together: {e}"),
        )
    })?;
    // exporter-toolkit's default: the server's suite order wins.
    config.ignore_client_order = raw.prefer_server_cipher_suites.unwrap_or(true);
    // Only HTTP/1.1 is served; advertising it keeps clients that offer h2 from trying it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(config)))
}

fn resolve_users(
    ctx: &Ctx<'_>,
    users: BTreeMap<String, Spanned<String>>,
) -> Result<Option<Arc<BasicAuth>>, WebConfigError> {
    if users.is_empty() {
        return Ok(None);
    }
    let mut table = BTreeMap::new();
    for (user, hash) in users {
        let key = format!("basic_auth_users.{user}");
        if user.is_empty() || user.contains(':') {
            return Err(ctx.invalid(hash.referenced, key, "a basic-auth user name must be non-empty and hold no ':'"));
        }
        if bcrypt::HashParts::from_str(&hash.value).is_err() {
            return Err(ctx.invalid(
                hash.referenced,
                key,
                "not a bcrypt hash (expected $2a$, $2b$ or $2y$, cost, then 53 characters; make one with \
                 `htpasswd -nBC 10 \"\" | tr -d ':\\n'`)",
            ));
        }
        table.insert(user, hash.value);
    }
    Ok(Some(Arc::new(BasicAuth::new(table))))
}

/// The response headers exporter-toolkit lets a user set, with the values allowed where it restricts them.
const SETTABLE_HEADERS: [(&str, &[&str]); 5] = [
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

fn resolve_headers(ctx: &Ctx<'_>, http: &RawHttp) -> Result<Vec<(HeaderName, HeaderValue)>, WebConfigError> {
    let mut out = Vec::new();
    for (name, value) in http.headers.iter().flatten() {
        let key = format!("http_server_config.headers.{name}");
        let Some((_, allowed)) = SETTABLE_HEADERS.iter().find(|(n, _)| n == name) else {
            let names: Vec<&str> = SETTABLE_HEADERS.iter().map(|(n, _)| *n).collect();
            return Err(ctx.invalid(
                value.referenced,
                key,
                format!("this header cannot be configured; allowed: {}", names.join(", ")),
            ));
        };
        // exporter-toolkit: a blank value leaves the header unset.
        if value.value.is_empty() {
            continue;
        }
        if !allowed.is_empty() && !allowed.contains(&value.value.as_str()) {
            return Err(ctx.invalid(
                value.referenced,
                key,
                format!("{:?} is not allowed; expected one of: {}", value.value, allowed.join(", ")),
            ));
        }
        let header_value = HeaderValue::from_str(&value.value)
            .map_err(|_| ctx.invalid(value.referenced, key.clone(), "not a valid HTTP header value"))?;
        let header_name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| ctx.invalid(value.referenced, key, "not a valid HTTP header name"))?;
        out.push((header_name, header_value));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(yaml: &str) -> String {
        match parse(yaml) {
            Ok(raw) => panic!("parsed: {raw:?}"),
            Err(e) => e,
        }
    }

    fn resolve_err(yaml: &str) -> String {
        match WebConfig::from_yaml(yaml, Path::new("/nonexistent-dir/web.yml")) {
            Ok(cfg) => panic!("resolved: {cfg:?}"),
            Err(e) => e.to_string(),
        }
    }

    // A well-formed bcrypt hash (resolving checks the format; checking passwords is the auth module's job).
    const HASH: &str = "$2b$04$5hYpdAbQdjCKVWvLizRuYeCB.t0GdWYhKq0qzpTW5pqmMRtuwnH9G";

    #[test]
    fn an_empty_or_comment_only_file_is_an_empty_config() {
        for text in ["", "\n\n", "# nothing here\n", "---\n"] {
            let cfg = WebConfig::from_yaml(text, Path::new("web.yml")).unwrap();
            assert!(!cfg.tls_enabled() && !cfg.basic_auth_enabled(), "{text:?}");
        }
    }

    #[test]
    fn the_exporter_toolkit_sample_parses_with_its_keys() {
        let raw = parse(
            "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n  min_version: TLS13\n\
             basic_auth_users:\n  alice: $2y$10$mDwo.lAisC94iLAyP81MCesa29IzH37oigHC/42V2pdJlUprsJPze\n",
        )
        .unwrap();
        let tls = raw.tls_server_config.unwrap().value;
        assert_eq!(tls.cert_file.unwrap().value, "server.crt");
        assert_eq!(tls.key_file.as_ref().unwrap().value, "server.key");
        assert_eq!(tls.key_file.unwrap().referenced.line(), 3);
        assert_eq!(tls.min_version.unwrap().value, TlsVersion::Tls13);
        assert!(raw.basic_auth_users.unwrap()["alice"].value.starts_with("$2y$10$"));
    }

    #[test]
    fn an_unknown_key_is_an_error_naming_it_and_its_line() {
        let e = parse_err("basic_auth_users: {}\ntls_server_config:\n  cert_fil: a.pem\n");
        assert!(e.contains("cert_fil"), "{e}");
        assert!(e.contains("line 3 column 3"), "{e}");
        let e = parse_err("web_listen: 1\n");
        assert!(e.contains("web_listen"), "{e}");
    }

    #[test]
    fn known_exporter_toolkit_keys_we_do_not_implement_say_not_supported() {
        for (yaml, key) in [
            ("rate_limit:\n  interval: 1s\n  burst: 20\n", "rate_limit"),
            ("auth_excluded_paths: [/metrics]\n", "auth_excluded_paths"),
            ("tls_server_config:\n  cipher_suites: [TLS_AES_128_GCM_SHA256]\n", "cipher_suites"),
            ("tls_server_config:\n  curve_preferences: [X25519]\n", "curve_preferences"),
            ("tls_server_config:\n  client_allowed_sans: [a]\n", "client_allowed_sans"),
            ("tls_server_config:\n  client_auth_type: RequireAnyClientCert\n", "RequireAnyClientCert"),
            ("tls_server_config:\n  min_version: TLS10\n", "TLS10"),
        ] {
            let e = parse_err(yaml);
            assert!(e.contains("not supported") && e.contains(key), "{yaml:?}: {e}");
        }
    }

    #[test]
    fn a_bad_enumerated_value_lists_the_good_ones() {
        let e = parse_err("tls_server_config:\n  client_auth_type: Sometimes\n");
        assert!(e.contains("Sometimes") && e.contains("RequireAndVerifyClientCert"), "{e}");
        let e = parse_err("tls_server_config:\n  max_version: TLS14\n");
        assert!(e.contains("TLS14") && e.contains("TLS12 or TLS13"), "{e}");
    }

    #[test]
    fn a_tls_section_without_files_is_plain_http_as_in_exporter_toolkit() {
        let cfg = WebConfig::from_yaml("tls_server_config:\n  cert_file: \"\"\n", Path::new("w.yml")).unwrap();
        assert!(!cfg.tls_enabled());
    }

    #[test]
    fn a_cert_without_a_key_is_named() {
        let e = resolve_err("tls_server_config:\n  cert_file: a.pem\n");
        assert!(e.contains("key_file (or key) is missing") && e.contains("/nonexistent-dir/web.yml"), "{e}");
        let e = resolve_err("tls_server_config:\n  key_file: a.key\n");
        assert!(e.contains("cert_file (or cert) is missing"), "{e}");
    }

    #[test]
    fn inline_and_file_together_are_refused() {
        let e = resolve_err("tls_server_config:\n  cert: abc\n  cert_file: a.pem\n  key_file: a.key\n");
        assert!(e.contains("web.yml:3:") && e.contains("give cert or cert_file, not both"), "{e}");
    }

    #[test]
    fn a_missing_cert_file_names_the_key_the_line_and_the_resolved_path() {
        let e = resolve_err("tls_server_config:\n  cert_file: a.pem\n  key_file: a.key\n");
        assert!(e.contains("web.yml:2:"), "{e}");
        assert!(e.contains("tls_server_config.cert_file: cannot read /nonexistent-dir/a.pem"), "{e}");
    }

    #[test]
    fn an_inline_cert_that_is_not_pem_is_named() {
        let e = resolve_err("tls_server_config:\n  cert: hello\n  key: world\n");
        assert!(e.contains("tls_server_config.cert: no \"BEGIN CERTIFICATE\" block found"), "{e}");
    }

    #[test]
    fn basic_auth_users_need_bcrypt_hashes_and_colon_free_names() {
        let cfg = WebConfig::from_yaml(&format!("basic_auth_users:\n  alice: {HASH}\n"), Path::new("w.yml")).unwrap();
        assert!(cfg.basic_auth_enabled() && !cfg.tls_enabled());
        let e = resolve_err("basic_auth_users:\n  alice: hunter2\n");
        assert!(e.contains("web.yml:2:") && e.contains("basic_auth_users.alice: not a bcrypt hash"), "{e}");
        let e = resolve_err(&format!("basic_auth_users:\n  \"a:b\": {HASH}\n"));
        assert!(e.contains("hold no ':'"), "{e}");
        let cfg = WebConfig::from_yaml("basic_auth_users: {}\n", Path::new("w.yml")).unwrap();
        assert!(!cfg.basic_auth_enabled(), "an empty user list means no basic auth, as in exporter-toolkit");
    }

    #[test]
    fn parse_errors_name_the_file_in_the_snippet() {
        let e = resolve_err("rate_limit:\n  burst: 1\n");
        assert!(e.starts_with("web config /nonexistent-dir/web.yml: "), "{e}");
        assert!(e.contains("--> /nonexistent-dir/web.yml:2:3"), "{e}");
    }

    #[test]
    fn a_duplicate_user_is_an_error() {
        let e = parse_err(&format!("basic_auth_users:\n  alice: {HASH}\n  alice: {HASH}\n"));
        assert!(e.contains("line 3") && e.contains("duplicate mapping key: alice"), "{e}");
    }

    #[test]
    fn only_the_exporter_toolkit_headers_with_their_allowed_values_are_accepted() {
        let cfg = WebConfig::from_yaml(
            "http_server_config:\n  http2: false\n  headers:\n    X-Frame-Options: deny\n    \
             Strict-Transport-Security: max-age=31536000\n    X-XSS-Protection: \"\"\n",
            Path::new("w.yml"),
        )
        .unwrap();
        let names: Vec<&str> = cfg.headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["strict-transport-security", "x-frame-options"]);
        let e = resolve_err("http_server_config:\n  headers:\n    X-Frame-Options: allow\n");
        assert!(e.contains("\"allow\" is not allowed; expected one of: deny, sameorigin"), "{e}");
        let e = resolve_err("http_server_config:\n  headers:\n    Server: bms\n");
        assert!(e.contains("http_server_config.headers.Server: this header cannot be configured"), "{e}");
    }

    #[test]
    fn a_wrongly_typed_value_is_an_error_with_its_line() {
        let e = parse_err("basic_auth_users:\n  - alice\n");
        assert!(e.contains("line 2 column 3"), "{e}");
    }
}
