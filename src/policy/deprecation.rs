//! API lifecycle: announce deprecation and retire a route at its sunset.
//!
//! Adds `Deprecation` (RFC 9745, a structured-field date `@<unix seconds>`), `Sunset`
//! (RFC 8594, an HTTP-date) and `Link` (`rel="deprecation"`) to every response of the route;
//! once the sunset time has passed, the route answers 410 Gone itself and the backend is
//! never called. Header values are built at compile time.

use super::{Build, BuildCx, BuildError, Ctx, Flow, Policy};
use crate::body::Body;
use crate::config::DeprecationConfig;
use crate::error::GatewayError;
use http::{HeaderName, HeaderValue, Request, Response};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Deprecation {
    headers: Vec<(HeaderName, HeaderValue)>,
    sunset: Option<SystemTime>,
    sunset_text: String,
}

impl Build for Deprecation {
    type Config = DeprecationConfig;

    fn build(cfg: &DeprecationConfig, _cx: &BuildCx<'_>) -> Result<Self, BuildError> {
        let mut headers = Vec::new();
        let since = cfg.since.as_deref().map(parse_date).transpose()?;
        let sunset = cfg.sunset.as_deref().map(parse_date).transpose()?;
        if since.is_none() && sunset.is_none() {
            return Err(
                "expected `since` and/or `sunset` (dates like 2026-01-31 or 2026-01-31T12:00:00Z)"
                    .into(),
            );
        }
        if let (Some(a), Some(b)) = (since, sunset) {
            if b < a {
                return Err("`sunset` is earlier than `since`".into());
            }
        }
        if let Some(t) = since {
            let secs = t
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            headers.push((
                HeaderName::from_static("deprecation"),
                HeaderValue::from_str(&format!("@{secs}")).map_err(|e| e.to_string())?,
            ));
        }
        if let Some(t) = sunset {
            headers.push((
                HeaderName::from_static("sunset"),
                HeaderValue::from_str(&httpdate::fmt_http_date(t)).map_err(|e| e.to_string())?,
            ));
        }
        if let Some(link) = &cfg.link {
            if link.contains(['<', '>', '"', '\r', '\n']) {
                return Err(format!("`link` {link:?} must be a plain URL").into());
            }
            headers.push((
                http::header::LINK,
                HeaderValue::from_str(&format!("<{link}>; rel=\"deprecation\""))
                    .map_err(|_| format!("`link` {link:?} is not a valid header value"))?,
            ));
        }
        Ok(Deprecation {
            headers,
            sunset,
            sunset_text: cfg.sunset.clone().unwrap_or_default(),
        })
    }
}

impl Deprecation {
    fn decorate(&self, res: &mut Response<Body>) {
        for (k, v) in &self.headers {
            res.headers_mut().insert(k.clone(), v.clone());
        }
    }
}

impl Policy for Deprecation {
    async fn on_request(
        &self,
        _cx: &mut Ctx,
        _req: &mut Request<Body>,
    ) -> Result<Flow, GatewayError> {
        match self.sunset {
            Some(t) if SystemTime::now() >= t => Err(GatewayError::Gone(format!(
                "this API was retired at its sunset ({})",
                self.sunset_text
            ))),
            _ => Ok(Flow::Continue),
        }
    }

    async fn on_response(
        &self,
        _cx: &mut Ctx,
        res: &mut Response<Body>,
    ) -> Result<(), GatewayError> {
        self.decorate(res);
        Ok(())
    }
}

/// `YYYY-MM-DD` (midnight UTC), RFC 3339 (`2026-01-31T12:00:00Z`, `+02:00` offsets) or an
/// HTTP-date.
pub fn parse_date(s: &str) -> Result<SystemTime, String> {
    let bad = || {
        format!("{s:?} is not a date; expected 2026-01-31, 2026-01-31T12:00:00Z or an HTTP-date")
    };
    if let Ok(t) = httpdate::parse_http_date(s) {
        return Ok(t);
    }
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) {
            part.parse().ok()
        } else {
            None
        }
    };
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return Err(bad());
    }
    let (y, m, d) = (
        num(0..4).ok_or_else(bad)?,
        num(5..7).ok_or_else(bad)?,
        num(8..10).ok_or_else(bad)?,
    );
    if !(1..=12).contains(&m) || !(1..=days_in_month(y, m)).contains(&d) {
        return Err(bad());
    }
    let mut secs = days_from_civil(y, m, d) * 86_400;
    if b.len() > 10 {
        if !matches!(b[10], b'T' | b't' | b' ') || b.len() < 19 || b[13] != b':' || b[16] != b':' {
            return Err(bad());
        }
        let (hh, mm, ss) = (
            num(11..13).ok_or_else(bad)?,
            num(14..16).ok_or_else(bad)?,
            num(17..19).ok_or_else(bad)?,
        );
        if hh > 23 || mm > 59 || ss > 60 {
            return Err(bad());
        }
        secs += hh * 3600 + mm * 60 + ss;
        let mut rest = &s[19..];
        if let Some(r) = rest.strip_prefix('.') {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            rest = &r[n..];
        }
        match rest {
            "Z" | "z" => {}
            off if off.len() == 6
                && matches!(off.as_bytes()[0], b'+' | b'-')
                && off.as_bytes()[3] == b':' =>
            {
                let oh: i64 = off[1..3].parse().map_err(|_| bad())?;
                let om: i64 = off[4..6].parse().map_err(|_| bad())?;
                let delta = oh * 3600 + om * 60;
                secs += if off.starts_with('+') { -delta } else { delta };
            }
            _ => return Err(bad()),
        }
    }
    if secs < 0 {
        return Err(bad());
    }
    Ok(UNIX_EPOCH + Duration::from_secs(secs as u64))
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> u64 {
        parse_date(s)
            .unwrap()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn dates() {
        assert_eq!(secs("1970-01-01"), 0);
        assert_eq!(secs("2024-02-29"), 1_709_164_800);
        assert_eq!(secs("2026-01-31T12:00:00Z"), 1_769_860_800);
        assert_eq!(secs("2026-01-31T14:00:00+02:00"), 1_769_860_800);
        assert_eq!(secs("Sat, 31 Jan 2026 12:00:00 GMT"), 1_769_860_800);
        for bad in [
            "2026-13-01",
            "2025-02-29",
            "31/01/2026",
            "2026-01-31T25:00:00Z",
            "2026-01-31T12:00:00",
        ] {
            assert!(parse_date(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builds_headers() {
        let cfg = DeprecationConfig {
            since: Some("2026-01-31T12:00:00Z".into()),
            sunset: Some("2099-01-01".into()),
            link: Some("https://example.com/migrate".into()),
        };
        let d = crate::policy::test_cx(|cx| Deprecation::build(&cfg, cx)).unwrap();
        let mut res = Response::new(crate::body::empty());
        d.decorate(&mut res);
        assert_eq!(res.headers()["deprecation"], "@1769860800");
        assert_eq!(res.headers()["sunset"], "Thu, 01 Jan 2099 00:00:00 GMT");
        assert_eq!(
            res.headers()["link"],
            "<https://example.com/migrate>; rel=\"deprecation\""
        );
    }

    #[test]
    fn rejects_bad_config() {
        let cfg = |since: Option<&str>, sunset: Option<&str>| DeprecationConfig {
            since: since.map(Into::into),
            sunset: sunset.map(Into::into),
            link: None,
        };
        crate::policy::test_cx(|cx| {
            assert!(Deprecation::build(&cfg(None, None), cx).is_err());
            assert!(Deprecation::build(&cfg(Some("2026-02-01"), Some("2026-01-01")), cx).is_err());
            assert!(Deprecation::build(&cfg(Some("soon"), None), cx).is_err());
        });
    }
}
