//! Validation of label values that become parts of Kubernetes API paths.
//!
//! A label such as `namespace="../../secrets"` must never reach a URL, so every value is
//! checked against the exact syntax Kubernetes accepts for that field before any request.

/// Checks an RFC 1123 DNS label: what namespaces (and most object names) must be.
pub fn dns_label(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("label `{field}` is empty"));
    }
    if value.len() > 63 {
        return Err(format!(
            "label `{field}` is {} characters long; a Kubernetes name allows at most 63",
            value.len()
        ));
    }
    if !is_label_shape(value) {
        return Err(format!(
            "label `{field}`=\"{}\" is not a valid Kubernetes name (lower-case letters, digits and '-', starting and ending with a letter or digit)",
            printable(value)
        ));
    }
    Ok(())
}

/// Checks an RFC 1123 DNS subdomain: what object names and mesh hosts (FQDNs) must be.
pub fn dns_subdomain(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("label `{field}` is empty"));
    }
    if value.len() > 253 {
        return Err(format!(
            "label `{field}` is {} characters long; a Kubernetes name allows at most 253",
            value.len()
        ));
    }
    if !value.split('.').all(is_label_shape) {
        return Err(format!(
            "label `{field}`=\"{}\" is not a valid Kubernetes name (dot-separated lower-case letters, digits and '-')",
            printable(value)
        ));
    }
    Ok(())
}

/// Checks a Kubernetes label value (used for versions / subsets): at most 63 characters,
/// alphanumerics plus `-`, `_` and `.`, beginning and ending with an alphanumeric.
pub fn label_value(field: &str, value: &str) -> Result<(), String> {
    let bytes = value.as_bytes();
    let edges_ok = bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric);
    let body_ok = bytes
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if value.len() > 63 || !edges_ok || !body_ok {
        return Err(format!(
            "label `{field}`=\"{}\" is not a valid Kubernetes label value (at most 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit)",
            printable(value)
        ));
    }
    Ok(())
}

fn is_label_shape(part: &str) -> bool {
    let bytes = part.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// Renders a hostile value safely for an error message: control characters escaped and
/// long values cut, so the message itself cannot be used to forge log lines.
pub fn printable(value: &str) -> String {
    const MAX: usize = 80;
    let mut out: String = value
        .chars()
        .take(MAX)
        .flat_map(char::escape_debug)
        .collect();
    if value.chars().count() > MAX {
        out.push('…');
    }
    out
}

/// Makes an error message that quotes outside input safe to log and show: control
/// characters escaped (`\n`, `\u{7f}`, ...) and the whole message cut to
/// [`MAX_MESSAGE_CHARS`], so no input can forge log lines or flood a report.
pub fn clean_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE_CHARS));
    for (count, c) in message.chars().enumerate() {
        if count == MAX_MESSAGE_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    out
}

/// The longest error message [`clean_message`] lets through, in characters.
pub const MAX_MESSAGE_CHARS: usize = 1000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_names_follow_rfc1123_labels() {
        assert!(dns_label("namespace", "shop").is_ok());
        assert!(dns_label("namespace", "shop-2").is_ok());
        for bad in [
            "", "Shop", "shop/x", "..", "-shop", "shop-", "a.b", "sh op", "ünï",
        ] {
            assert!(dns_label("namespace", bad).is_err(), "{bad:?} accepted");
        }
        assert!(dns_label("namespace", &"a".repeat(63)).is_ok());
        let too_long = dns_label("namespace", &"a".repeat(64)).unwrap_err();
        assert!(too_long.contains("64 characters"), "{too_long}");
    }

    #[test]
    fn hosts_may_be_fully_qualified() {
        assert!(dns_subdomain("service", "checkout").is_ok());
        assert!(dns_subdomain("service", "checkout.shop.svc.cluster.local").is_ok());
        for bad in ["", "a..b", ".a", "a.", "../etc", "a/b", "A.b", "*.shop"] {
            assert!(dns_subdomain("service", bad).is_err(), "{bad:?} accepted");
        }
        assert!(dns_subdomain("service", &"a".repeat(254)).is_err());
    }

    #[test]
    fn versions_are_label_values() {
        for good in ["v1", "v2.1", "canary_2", "V1"] {
            assert!(label_value("version", good).is_ok(), "{good:?} refused");
        }
        for bad in ["", "-v1", "v1-", "v 1", "v1/2", &"v".repeat(64)] {
            assert!(label_value("version", bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn messages_quoting_input_are_cleaned() {
        assert_eq!(clean_message("a\nb\u{7f}c\u{85}"), "a\\nb\\u{7f}c\\u{85}");
        assert_eq!(clean_message("ünï → ok"), "ünï → ok");
        let long = clean_message(&"x".repeat(5000));
        assert_eq!(long.chars().count(), MAX_MESSAGE_CHARS + 1);
        assert!(long.ends_with('…'));
    }

    #[test]
    fn error_messages_escape_control_characters() {
        let err = dns_label("namespace", "a\nb").unwrap_err();
        assert!(err.contains("a\\nb"), "{err}");
        assert!(!err.contains('\n'));
    }
}
