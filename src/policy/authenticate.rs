//! `authenticate`: the route accepts a caller that any one of the listed methods accepts.
//!
//! ```yaml
//! - authenticate: [corporate-idp, api_key]                     # any one of them
//! - authenticate: { methods: [basic, anonymous], hide_credentials: true }
//! ```
//!
//! Methods are asked in the listed order; the first that accepts the request's credential
//! wins. `anonymous` lets a request without any credential through as the anonymous identity —
//! but a request with a credential that is refused still gets 401, so a typo or an expired
//! token is reported rather than silently downgraded. The answer is 401 with one
//! `WWW-Authenticate` challenge per scheme of the route (`Bearer` carries
//! `error="invalid_token"` when a token was refused, RFC 6750), or 503 when a provider could
//! not be asked. On success the identity goes into `Ctx` and its headers (`X-Consumer-Name`,
//! `X-Consumer-Roles`, forwarded claims) onto the request; `hide_credentials` removes the
//! credentials of every listed method before the request goes upstream.

use super::{Build, BuildCx, BuildError, Ctx, Flow, Policy, PolicyConfig};
use crate::auth::{Challenges, Identity, Method, Outcome, Scheme};
use crate::body::Body;
use crate::config::auth::AuthenticateConfig;
use crate::error::GatewayError;
use http::Request;

pub struct Authenticate {
    methods: Vec<Method>,
    anonymous: bool,
    hide: bool,
    challenges: Challenges,
}

impl Build for Authenticate {
    type Config = AuthenticateConfig;

    fn build(cfg: &AuthenticateConfig, cx: &BuildCx<'_>) -> Result<Self, BuildError> {
        let at = |i: usize| {
            if cfg.long_form {
                format!(".methods[{i}]")
            } else {
                format!("[{i}]")
            }
        };
        let mut errs = BuildError::default();
        if cx
            .route
            .iter()
            .filter(|p| matches!(p, PolicyConfig::Authenticate(_)))
            .count()
            > 1
        {
            errs.0.push((
                String::new(),
                "a route has one `authenticate`: list every accepted method in it".into(),
            ));
        }
        let mut methods = Vec::new();
        let mut anonymous = false;
        for (i, name) in cfg.methods.iter().enumerate() {
            if cfg.methods[..i].contains(name) {
                errs.0.push((at(i), format!("{name:?} is listed twice")));
                continue;
            }
            match cx.auth.method(name) {
                Ok(Method::Anonymous) => anonymous = true,
                Ok(m) => methods.push(m),
                // A provider whose definition failed is reported there.
                Err(true) => {}
                Err(false) => errs.0.push((
                    at(i),
                    format!(
                        "unknown auth provider {name:?}; known: {}",
                        cx.auth.known_methods().join(", ")
                    ),
                )),
            }
        }
        if cfg.methods.is_empty() {
            errs.0.push((
                if cfg.long_form {
                    ".methods".into()
                } else {
                    String::new()
                },
                format!(
                    "list at least one method; known: {}",
                    cx.auth.known_methods().join(", ")
                ),
            ));
        }
        if !errs.0.is_empty() {
            return Err(errs);
        }
        let challenges = Challenges::new(&methods, &cx.auth.realm);
        Ok(Authenticate {
            methods,
            anonymous,
            hide: cfg.hide_credentials,
            challenges,
        })
    }
}

impl Authenticate {
    fn accept(&self, cx: &mut Ctx, req: &mut Request<Body>, id: Identity) -> Flow {
        if self.hide {
            for m in &self.methods {
                m.hide(req);
            }
        }
        id.forward(req.headers_mut());
        // What rate limits key on: the consumer's name and the key's digest.
        cx.consumer = id.consumer.as_ref().map(|c| c.name.clone());
        cx.api_key = id.key_id.clone();
        cx.identity = Some(id);
        Flow::Continue
    }
}

impl Policy for Authenticate {
    async fn on_request(
        &self,
        cx: &mut Ctx,
        req: &mut Request<Body>,
    ) -> Result<Flow, GatewayError> {
        let mut invalid = false;
        let mut bearer_invalid = false;
        let mut unavailable = false;
        for m in &self.methods {
            match m.check(cx, req.headers(), req.uri()).await? {
                Outcome::Valid(id) => return Ok(self.accept(cx, req, id)),
                Outcome::Absent => {}
                Outcome::Invalid => {
                    invalid = true;
                    bearer_invalid |= m.scheme() == Some(Scheme::Bearer);
                }
                Outcome::Unavailable => unavailable = true,
            }
        }
        if unavailable {
            return Err(GatewayError::AuthUnavailable);
        }
        if !invalid && self.anonymous {
            return Ok(self.accept(cx, req, Identity::anonymous()));
        }
        tracing::debug!(
            request_id = cx.request_id_str(),
            route = &*cx.route_name,
            credential_refused = invalid,
            "authentication failed"
        );
        crate::observe::metrics::auth_failure(if invalid {
            crate::observe::metrics::AuthFailure::Invalid
        } else {
            crate::observe::metrics::AuthFailure::Missing
        });
        Err(self.challenges.unauthorized(bearer_invalid))
    }
}
