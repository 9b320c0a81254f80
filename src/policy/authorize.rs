//! `authorize`: what an authenticated caller may do on the route.
//!
//! ```yaml
//! - authorize: { roles: [reader, admin], scopes: ["users:read"], claims: { tenant: acme } }
//! ```
//!
//! Every listed kind of check must pass: `roles` — at least one of them (the consumer's roles
//! and the token's `roles_claim`); `scopes` — all of them (the token's `scope`/`scp`);
//! `claims` — each claim equals one of its values, or for a list claim contains one. A caller
//! who is refused gets 403 with a body that does not say which check failed; when only the
//! scopes were missing from a bearer token, the RFC 6750 `insufficient_scope` challenge comes
//! with it. The anonymous identity gets 401 and the route's challenges instead: credentials
//! might help.

use super::{Build, BuildCx, BuildError, Ctx, Flow, Policy, PolicyConfig};
use crate::auth::{claim_strings, Challenges, ClaimPath};
use crate::body::Body;
use crate::config::auth::AuthorizeConfig;
use crate::error::GatewayError;
use http::{HeaderValue, Request};

pub struct Authorize {
    roles: Vec<String>,
    scopes: Vec<String>,
    claims: Vec<(ClaimPath, Vec<String>)>,
    challenges: Challenges,
    insufficient_scope: Option<HeaderValue>,
}

impl Build for Authorize {
    type Config = AuthorizeConfig;

    fn build(cfg: &AuthorizeConfig, cx: &BuildCx<'_>) -> Result<Self, BuildError> {
        let mut errs = BuildError::default();
        let authn = cx.route.iter().find_map(|p| match p {
            PolicyConfig::Authenticate(a) => Some(a),
            _ => None,
        });
        let Some(authn) = authn else {
            return Err(BuildError::at(
                "",
                "`authorize` needs an `authenticate` policy on the same route",
            ));
        };
        if cfg.roles.is_empty() && cfg.scopes.is_empty() && cfg.claims.is_empty() {
            errs.0.push((
                String::new(),
                "expected at least one of `roles`, `scopes`, `claims`".into(),
            ));
        }
        for (i, s) in cfg.scopes.iter().enumerate() {
            if s.is_empty()
                || s.contains(|c: char| {
                    c == '"' || c == '\\' || c.is_whitespace() || c.is_control()
                })
            {
                errs.0.push((
                    format!(".scopes[{i}]"),
                    format!("{s:?}: a scope is one word without quotes or backslashes"),
                ));
            }
        }
        for (name, v) in &cfg.claims {
            if v.0.is_empty() {
                errs.0
                    .push((format!(".claims.{name}"), "list at least one value".into()));
            }
        }
        if !errs.0.is_empty() {
            return Err(errs);
        }
        let methods: Vec<_> = authn
            .methods
            .iter()
            .filter_map(|m| cx.auth.method(m).ok())
            .collect();
        let challenges = Challenges::new(&methods, &cx.auth.realm);
        let insufficient_scope = (challenges.bearer && !cfg.scopes.is_empty()).then(|| {
            HeaderValue::from_str(&format!(
                "Bearer realm=\"{}\", error=\"insufficient_scope\", scope=\"{}\"",
                challenges.realm,
                cfg.scopes.join(" ")
            ))
            .expect("checked above")
        });
        Ok(Authorize {
            roles: cfg.roles.clone(),
            scopes: cfg.scopes.clone(),
            claims: cfg
                .claims
                .iter()
                .map(|(k, v)| (ClaimPath::new(k), v.0.clone()))
                .collect(),
            challenges,
            insufficient_scope,
        })
    }
}

impl Policy for Authorize {
    async fn on_request(
        &self,
        cx: &mut Ctx,
        _req: &mut Request<Body>,
    ) -> Result<Flow, GatewayError> {
        let Some(id) = &cx.identity else {
            return Err(self.challenges.unauthorized(false));
        };
        let roles_ok = self.roles.is_empty() || self.roles.iter().any(|r| id.has_role(r));
        let claims_ok = self.claims.iter().all(|(path, wanted)| {
            id.claims()
                .and_then(|c| path.get(c))
                .is_some_and(|v| claim_strings(v, false).iter().any(|s| wanted.contains(s)))
        });
        let scopes_ok = self.scopes.iter().all(|s| id.has_scope(s));
        if roles_ok && claims_ok && scopes_ok {
            return Ok(Flow::Continue);
        }
        if id.is_anonymous() {
            return Err(self.challenges.unauthorized(false));
        }
        tracing::debug!(
            request_id = cx.request_id_str(),
            route = &*cx.route_name,
            method = &*id.method,
            "authorization refused"
        );
        crate::observe::metrics::auth_failure(crate::observe::metrics::AuthFailure::Forbidden);
        let only_scopes = roles_ok && claims_ok && id.token.is_some();
        Err(GatewayError::Forbidden {
            challenge: if only_scopes {
                self.insufficient_scope.clone()
            } else {
                None
            },
        })
    }
}
