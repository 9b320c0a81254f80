//! What the user wrote about identity: `consumers:`, the `auth:` section (identity providers
//! that routes refer to by name) and the `authenticate`, `authorize` and `ip_filter` route
//! policies.
//!
//! Same convention as the rest of [`crate::config`]: unknown keys are errors, secrets may come
//! from `${VAR}`, nothing here is checked beyond its shape; [`crate::auth::compile`] and the
//! policies' `Build` turn these into runtime values with located diagnostics.

use super::{int_or_string, Dur, OneOrMany};
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;

/// `consumers[]`: a known caller (an application, a partner), with its credentials.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Position in the file, for diagnostics (set by the loader).
    #[serde(skip)]
    pub index: usize,
    /// Forwarded upstream as `X-Consumer-Name`; the key for per-consumer rate limits.
    pub name: String,
    /// Other identifiers this consumer is known by: a token's `client_id` or `sub`, a client
    /// certificate's CN or SAN. Tokens and certificates map to a consumer by name or id.
    #[serde(default)]
    pub ids: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    /// Free-form data for later policies and operators; not forwarded.
    #[serde(default)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// `sha256:<64 hex>` digests (see `portcullis hash-key`); plain keys are accepted with a
    /// warning.
    #[serde(default)]
    pub api_keys: Vec<String>,
    #[serde(default)]
    pub basic: Option<BasicCredentialConfig>,
    /// Per-consumer limits, applied by rate limiting.
    #[serde(default)]
    pub limits: Vec<LimitConfig>,
}

/// `consumers[].basic`: a user name and an argon2id or bcrypt hash (`portcullis hash-password`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicCredentialConfig {
    pub user: String,
    pub password: String,
}

/// `consumers[].limits[]`: `requests` per `per`, with the same optional `algorithm`, `burst`
/// and `name` as a route's `rate_limit` limits. They replace the route's limits of the same
/// name for this consumer (see the rate_limit policy).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitConfig {
    #[serde(deserialize_with = "int_or_string")]
    pub requests: u64,
    pub per: Dur,
    #[serde(default)]
    pub algorithm: Option<crate::state::Algorithm>,
    #[serde(default)]
    pub burst: Option<u64>,
    #[serde(default)]
    pub name: Option<String>,
}

/// `auth`: identity providers, by name, and settings of the built-in methods.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The realm in `WWW-Authenticate` challenges. Default `portcullis`.
    #[serde(default)]
    pub realm: Option<String>,
    #[serde(default)]
    pub api_key: ApiKeyConfig,
    #[serde(default)]
    pub basic: BasicConfig,
    #[serde(default)]
    pub mtls: MtlsConfig,
    #[serde(default)]
    pub jwt: BTreeMap<String, JwtConfig>,
    #[serde(default)]
    pub introspection: BTreeMap<String, IntrospectionConfig>,
}

/// `auth.api_key`: where API keys are read from.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// Header name. Default `X-API-Key`.
    #[serde(default)]
    pub header: Option<String>,
    /// Query parameter name; off unless set (keys in URLs end up in logs elsewhere).
    #[serde(default)]
    pub query: Option<String>,
}

/// `auth.basic`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicConfig {
    /// How long a successful password check is remembered. Default 30s; `0s` turns it off.
    #[serde(default)]
    pub cache_for: Option<Dur>,
}

/// `auth.mtls`: how a verified client certificate names a consumer.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsConfig {
    /// Certificate fields tried in order; the first value that names a consumer (by name or
    /// id) wins. Default `[san, cn]`.
    #[serde(default)]
    pub consumer_from: Vec<CertField>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CertField {
    /// Every subjectAltName: DNS names, URIs (SPIFFE ids), e-mail addresses, IP addresses.
    San,
    /// The subject's common name.
    Cn,
    /// The whole subject as text, e.g. `CN=acme, O=Acme Inc`.
    Subject,
}

fn yes() -> bool {
    true
}

/// `auth.jwt.NAME`: JSON Web Tokens signed with an inline secret or key, or with keys from a
/// JWKS URI.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Accepted `iss` value(s); unchecked when absent.
    #[serde(default)]
    pub issuer: Option<OneOrMany>,
    /// Accepted `aud` values (any one); when absent, a token that has `aud` is refused.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// The allow-list: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA.
    pub algorithms: Vec<String>,
    /// HMAC secret (HS*). Use `${VAR}`.
    #[serde(default)]
    pub secret: Option<String>,
    /// The secret is base64 (as some IdPs hand it out).
    #[serde(default)]
    pub secret_base64: bool,
    /// A PEM public key (RS*, PS*, ES*, EdDSA): inline text or a file path.
    #[serde(default)]
    pub public_key: Option<String>,
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Background refresh of the JWKS. Default 5m.
    #[serde(default)]
    pub jwks_refresh: Option<Dur>,
    /// Least time between two fetches triggered by an unknown `kid`. Default 10s.
    #[serde(default)]
    pub jwks_min_refetch: Option<Dur>,
    /// CA certificate (PEM file) for an https JWKS URI with a private CA.
    #[serde(default)]
    pub ca: Option<String>,
    /// Timeout of a JWKS fetch. Default 5s.
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Clock skew allowed on `exp`, `nbf` and `iat`. Default 60s.
    #[serde(default)]
    pub leeway: Option<Dur>,
    /// A claim whose value names a consumer (by name or id); the token is refused when it
    /// names none.
    #[serde(default)]
    pub consumer_claim: Option<String>,
    /// A claim holding roles (a list or a space-separated string); `/a/b` is a JSON pointer.
    #[serde(default)]
    pub roles_claim: Option<String>,
    /// Claims forwarded upstream: claim → header name.
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Read `Authorization: Bearer`. Default true.
    #[serde(default = "yes")]
    pub bearer: bool,
    /// Also read the token from this cookie.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Also read the token from this query parameter.
    #[serde(default)]
    pub query: Option<String>,
    /// Verified tokens remembered until they expire (bounded). Default 10000; 0 turns it off.
    #[serde(default, deserialize_with = "opt_int")]
    pub cache_size: Option<usize>,
}

/// `auth.introspection.NAME`: OAuth2 token introspection (RFC 7662).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    pub url: String,
    pub client_id: String,
    pub client_secret: String,
    /// Longest time an active result is remembered (never beyond the token's `exp`). Default 60s.
    #[serde(default)]
    pub cache_for: Option<Dur>,
    /// Most results remembered. Default 10000.
    #[serde(default, deserialize_with = "opt_int")]
    pub cache_size: Option<usize>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    #[serde(default)]
    pub ca: Option<String>,
    #[serde(default)]
    pub consumer_claim: Option<String>,
    #[serde(default)]
    pub roles_claim: Option<String>,
    #[serde(default)]
    pub forward_claims: BTreeMap<String, String>,
    /// Read `Authorization: Bearer`. Default true.
    #[serde(default = "yes")]
    pub bearer: bool,
    /// Also read the token from this cookie.
    #[serde(default)]
    pub cookie: Option<String>,
    /// Also read the token from this query parameter.
    #[serde(default)]
    pub query: Option<String>,
}

fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<usize>, D::Error> {
    #[derive(Deserialize)]
    #[serde(transparent)]
    struct N(#[serde(deserialize_with = "int_or_string")] usize);
    Ok(Option::<N>::deserialize(d)?.map(|n| n.0))
}

// === route policies ===

/// `authenticate: [method, ...]` or `authenticate: { methods: [...], hide_credentials: true }`.
/// A method is `api_key`, `basic`, `mtls`, `anonymous` or the name of an `auth.jwt` or
/// `auth.introspection` provider; any one of them is enough.
#[derive(Debug, Clone)]
pub struct AuthenticateConfig {
    pub methods: Vec<String>,
    /// Remove the credential before forwarding.
    pub hide_credentials: bool,
    /// Written as a mapping (diagnostics point into `methods`).
    pub long_form: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthenticateLong {
    methods: Vec<String>,
    #[serde(default)]
    hide_credentials: bool,
}

impl<'de> Deserialize<'de> for AuthenticateConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AuthenticateConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of methods, or a mapping with `methods` and `hide_credentials`")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut methods = Vec::new();
                while let Some(m) = seq.next_element::<String>()? {
                    methods.push(m);
                }
                Ok(AuthenticateConfig {
                    methods,
                    hide_credentials: false,
                    long_form: false,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                let long =
                    AuthenticateLong::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(AuthenticateConfig {
                    methods: long.methods,
                    hide_credentials: long.hide_credentials,
                    long_form: true,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// `authorize`: every listed check must pass. `roles`: at least one of them; `scopes`: all
/// of them; `claims`: each claim equals one of its values (or, for a list claim, contains one).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeConfig {
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub claims: BTreeMap<String, OneOrMany>,
}

/// `ip_filter`: CIDRs or single addresses, IPv4 or IPv6. A `deny` match always refuses; with
/// an `allow` list, only addresses in it pass.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IpFilterConfig {
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub deny: Vec<String>,
}
