//! Checks of the gateway's RFC 9457 problem+json answers.

use serde_json::Value;

/// Checks an RFC 9457 body as the gateway writes it: content type, the five keys, `status`
/// equal to the response status and `request_id` equal to the response's `X-Request-Id`.
pub fn check_problem(
    status: u16,
    content_type: Option<&str>,
    request_id_header: Option<&str>,
    body: &[u8],
) -> Value {
    assert_eq!(content_type, Some("application/problem+json"));
    let v: Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "problem body is not JSON ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    for key in ["type", "title", "status", "detail", "request_id"] {
        assert!(v.get(key).is_some(), "problem without {key:?}: {v}");
    }
    assert!(
        v["type"]
            .as_str()
            .unwrap()
            .starts_with("urn:portcullis:problem:"),
        "{v}"
    );
    assert_eq!(v["status"], status, "{v}");
    assert!(!v["title"].as_str().unwrap().is_empty(), "{v}");
    assert!(!v["detail"].as_str().unwrap().is_empty(), "{v}");
    let id = v["request_id"].as_str().unwrap();
    assert!(!id.is_empty(), "{v}");
    assert_eq!(
        Some(id),
        request_id_header,
        "request_id differs from the header"
    );
    v
}

/// Checks a reqwest response is the gateway's problem+json with `status`; returns the problem.
pub async fn problem(res: reqwest::Response, status: u16) -> Value {
    let got = res.status().as_u16();
    let ct = header(&res, "content-type");
    let id = header(&res, "x-request-id");
    let body = res.bytes().await.unwrap();
    assert_eq!(got, status, "{}", String::from_utf8_lossy(&body));
    check_problem(status, ct.as_deref(), id.as_deref(), &body)
}

/// A response header as text.
pub fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
}

/// The problem `type` ends with this slug.
pub fn assert_type(p: &Value, slug: &str) {
    assert_eq!(p["type"], format!("urn:portcullis:problem:{slug}"), "{p}");
}

/// [`problem`] whose `type` ends with `slug`.
pub async fn problem_typed(res: reqwest::Response, status: u16, slug: &str) -> Value {
    let p = problem(res, status).await;
    assert_type(&p, slug);
    p
}
