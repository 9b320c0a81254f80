//! Request path normalisation: done once, then routing, policies and the upstream all see
//! the same form. A gateway that checks one spelling and forwards another can be bypassed.
//!
//! - percent-encoded unreserved characters (`%41` → `A`, `%2E` → `.`) are decoded, other
//!   escapes are kept with upper-case hex;
//! - encoded `/` (`%2F`), `\` (`%5C`), NUL (`%00`), raw `\`, and malformed escapes are refused
//!   (400): they mean different things to different backends;
//! - empty segments (`//`) collapse, `.` segments go, `..` removes the previous segment and
//!   never climbs above the root;
//! - a trailing slash is kept: `/a/` and `/a` may be different resources.

use std::borrow::Cow;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("the path must start with '/'")]
    NotAbsolute,
    #[error("the path contains a malformed percent-escape")]
    BadEscape,
    #[error("the path contains an encoded '/' or '\\'")]
    EncodedSeparator,
    #[error("the path contains a backslash")]
    Backslash,
    #[error("the path contains a NUL byte")]
    Nul,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalises a raw request path (without the query). Borrowed when already normal, which is
/// the common case and costs one scan.
pub fn normalize_path(raw: &str) -> Result<Cow<'_, str>, PathError> {
    let bytes = raw.as_bytes();
    if bytes.first() != Some(&b'/') {
        // `*` (OPTIONS *) and authority-form never reach routing as paths.
        return Err(PathError::NotAbsolute);
    }
    if !needs_work(bytes)? {
        return Ok(Cow::Borrowed(raw));
    }

    // 1. Decode unreserved escapes, refuse the dangerous ones.
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (h, l) = match (
                bytes.get(i + 1).and_then(|&c| hex(c)),
                bytes.get(i + 2).and_then(|&c| hex(c)),
            ) {
                (Some(h), Some(l)) => (h, l),
                _ => return Err(PathError::BadEscape),
            };
            let v = h << 4 | l;
            match v {
                b'/' | b'\\' => return Err(PathError::EncodedSeparator),
                0 => return Err(PathError::Nul),
                v if is_unreserved(v) => decoded.push(v),
                v => {
                    decoded.push(b'%');
                    decoded.extend_from_slice(format!("{v:02X}").as_bytes());
                }
            }
            i += 3;
        } else {
            decoded.push(b);
            i += 1;
        }
    }

    // 2. Resolve segments.
    let trailing = decoded.last() == Some(&b'/') && decoded.len() > 1;
    let mut out: Vec<&[u8]> = Vec::new();
    let mut last_was_dot = false;
    for seg in decoded.split(|&b| b == b'/') {
        last_was_dot = false;
        match seg {
            b"" => {}
            b"." => last_was_dot = true,
            b".." => {
                out.pop();
                last_was_dot = true;
            }
            s => out.push(s),
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &out {
        path.push('/');
        // Only ASCII was decoded, and the raw path was a valid &str.
        path.push_str(std::str::from_utf8(s).map_err(|_| PathError::BadEscape)?);
    }
    if path.is_empty() || trailing || (last_was_dot && !out.is_empty()) {
        path.push('/');
    }
    Ok(Cow::Owned(path))
}

/// One pass to see whether anything must change, and to refuse a raw backslash.
fn needs_work(bytes: &[u8]) -> Result<bool, PathError> {
    let mut work = false;
    let mut prev = 0u8;
    for (i, &b) in bytes.iter().enumerate() {
        match b {
            b'\\' => return Err(PathError::Backslash),
            0 => return Err(PathError::Nul),
            b'%' => work = true,
            b'/' if prev == b'/' => work = true,
            b'.' if prev == b'/' => {
                let next = bytes.get(i + 1).copied();
                let next2 = bytes.get(i + 2).copied();
                if matches!(next, None | Some(b'/'))
                    || (next == Some(b'.') && matches!(next2, None | Some(b'/')))
                {
                    work = true;
                }
            }
            _ => {}
        }
        prev = b;
    }
    Ok(work)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Result<String, PathError> {
        normalize_path(s).map(|c| c.into_owned())
    }

    #[test]
    fn keeps_normal_paths_borrowed() {
        assert!(matches!(
            normalize_path("/api/v1/users/42"),
            Ok(Cow::Borrowed(_))
        ));
        assert!(matches!(
            normalize_path("/a/.well-known/x"),
            Ok(Cow::Borrowed(_))
        ));
    }

    #[test]
    fn resolves_dots_and_slashes() {
        assert_eq!(n("/a//b").unwrap(), "/a/b");
        assert_eq!(n("/a/./b").unwrap(), "/a/b");
        assert_eq!(n("/a/b/../c").unwrap(), "/a/c");
        assert_eq!(n("/../../etc/passwd").unwrap(), "/etc/passwd");
        assert_eq!(n("/a/b/..").unwrap(), "/a/");
        assert_eq!(n("/a/").unwrap(), "/a/");
        assert_eq!(n("//").unwrap(), "/");
        assert_eq!(n("/").unwrap(), "/");
        assert_eq!(n("/admin/..").unwrap(), "/");
    }

    #[test]
    fn decodes_unreserved_only() {
        assert_eq!(n("/%61dmin").unwrap(), "/admin");
        assert_eq!(n("/a/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/a%20b").unwrap(), "/a%20b");
        assert_eq!(n("/a%3fb").unwrap(), "/a%3Fb");
        assert_eq!(n("/caf%C3%A9").unwrap(), "/caf%C3%A9");
    }

    #[test]
    fn refuses_ambiguous_forms() {
        assert_eq!(n("/a%2Fb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%2fb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a%5Cb"), Err(PathError::EncodedSeparator));
        assert_eq!(n("/a\\b"), Err(PathError::Backslash));
        assert_eq!(n("/a%00"), Err(PathError::Nul));
        assert_eq!(n("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(n("/a%4"), Err(PathError::BadEscape));
        assert_eq!(n("a"), Err(PathError::NotAbsolute));
        assert_eq!(n("*"), Err(PathError::NotAbsolute));
    }

    proptest::proptest! {
        /// Any input: no panic; a normalised path is a fixed point and has no `//`, `.` or
        /// `..` segments left, so routing and forwarding see one spelling.
        #[test]
        fn normal_form_is_stable(raw in "/[a-zA-Z0-9%./_~\\-]{0,40}") {
            if let Ok(once) = normalize_path(&raw) {
                let once = once.into_owned();
                let twice = normalize_path(&once).expect("a normal path stays valid").into_owned();
                proptest::prop_assert_eq!(&once, &twice);
                proptest::prop_assert!(!once.contains("//"), "{}", once);
                for seg in once.split('/') {
                    proptest::prop_assert!(seg != "." && seg != "..", "{}", once);
                }
            }
        }

        #[test]
        fn never_panics(raw in "\\PC{0,64}") {
            let _ = normalize_path(&raw);
        }
    }
}
