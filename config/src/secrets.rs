//! One rule for secrets, wherever they could appear.
//!
//! - Which settings are secret: [`is_secret`] (a librdkafka property or MongoDB URI option
//!   whose name marks it sensitive) and the credentials of a connection string.
//! - Structural masking, where the shape is known: [`mask_uri`] (the config print, the
//!   "connecting to MongoDB" context) and `Config::masked`.
//! - Scrubbing, everywhere else: every secret value of the loaded configuration is registered
//!   ([`register`]) and [`scrub`] replaces it with `***` in any text — error messages, log
//!   lines, `/readyz` reasons, panic messages — whatever component produced the text.
//! - Parse errors never hold a value of a secret setting: they name the setting and the type
//!   (see `crate::parse`).

use std::borrow::Cow;
use std::sync::RwLock;

use percent_encoding::percent_decode_str;

/// What replaces a secret.
pub const MASK: &str = "***";

/// Secrets shorter than this are masked where their setting is printed but not scrubbed from
/// free text (replacing every `ab` of a log line would garble it and hide nothing).
const MIN_SCRUBBED_LEN: usize = 4;

/// Words that mark a setting's name as sensitive (compared in lower case).
const SENSITIVE_WORDS: &[&str] = &[
    "password",
    "passwd",
    "secret",
    "token",
    "credential",
    "jaas",
    "extensions",
    "authmechanismproperties",
    "sasl.oauthbearer.config",
];

/// Name segments (between `.`, `_` and `-`) that mark a setting as sensitive: `ssl.key.pem`,
/// `ssl_key`, `ssl.keystore.password` (by its word).
const SENSITIVE_SEGMENTS: &[&str] = &["key", "pem"];

/// Whether a setting (a librdkafka property, a MongoDB URI option) holds a secret.
pub fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    SENSITIVE_WORDS.iter().any(|w| n.contains(w))
        || n.split(['.', '_', '-'])
            .any(|s| SENSITIVE_SEGMENTS.contains(&s))
}

/// The parts of a connection string: scheme, user, password, hosts-and-path, options.
struct UriParts<'a> {
    /// `mongodb://`
    scheme: &'a str,
    /// `user:password` (without the `@`), if any.
    userinfo: Option<&'a str>,
    /// Hosts and database, up to the `?`.
    rest: &'a str,
    /// The query, without the `?`.
    query: Option<&'a str>,
}

fn split_uri(uri: &str) -> Option<UriParts<'_>> {
    let scheme_end = uri.find("://")? + 3;
    let (head, query) = match uri[scheme_end..].find('?') {
        Some(q) => (&uri[..scheme_end + q], Some(&uri[scheme_end + q + 1..])),
        None => (uri, None),
    };
    // Credentials end at the last `@` before the query (a password may hold `@` and `:`).
    let (userinfo, rest) = match head[scheme_end..].rfind('@') {
        Some(at) => (
            Some(&head[scheme_end..scheme_end + at]),
            &head[scheme_end + at + 1..],
        ),
        None => (None, &head[scheme_end..]),
    };
    Some(UriParts {
        scheme: &uri[..scheme_end],
        userinfo,
        rest,
        query,
    })
}

/// A connection string with its password and every sensitive option's value replaced by
/// `***` (`mongodb://app:***@h/?tlsCertificateKeyFilePassword=***`).
pub fn mask_uri(uri: &str) -> String {
    let Some(p) = split_uri(uri) else {
        return uri.to_string();
    };
    let mut out = p.scheme.to_string();
    if let Some(userinfo) = p.userinfo {
        match userinfo.split_once(':') {
            Some((user, _)) => out += &format!("{user}:{MASK}@"),
            None => out += &format!("{userinfo}@"),
        }
    }
    out += p.rest;
    if let Some(query) = p.query {
        out.push('?');
        let options: Vec<String> = query
            .split('&')
            .map(|option| match option.split_once('=') {
                Some((name, _)) if is_secret(name) => format!("{name}={MASK}"),
                _ => option.to_string(),
            })
            .collect();
        out += &options.join("&");
    }
    out
}

/// The secret values a connection string holds: its password and the values of its
/// sensitive options, as written and percent-decoded, and the parts of a
/// `NAME:VALUE,NAME:VALUE` option such as `authMechanismProperties`.
pub fn uri_secrets(uri: &str) -> Vec<String> {
    let mut found = Vec::new();
    let Some(p) = split_uri(uri) else {
        return found;
    };
    if let Some((_, password)) = p.userinfo.and_then(|u| u.split_once(':')) {
        found.push(password.to_string());
    }
    for option in p.query.unwrap_or("").split('&') {
        if let Some((name, value)) = option.split_once('=') {
            if is_secret(name) {
                found.push(value.to_string());
                for pair in value.split(',') {
                    if let Some((_, v)) = pair.split_once(':') {
                        found.push(v.to_string());
                    }
                }
            }
        }
    }
    let decoded: Vec<String> = found
        .iter()
        .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    found.extend(decoded);
    found
}

/// Every secret value scrubbed from output, longest first (so that a secret containing
/// another is replaced whole).
static REGISTRY: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Adds secret values to the set [`scrub`] removes from any text.
pub fn register<I: IntoIterator<Item = String>>(values: I) {
    let Ok(mut registry) = REGISTRY.write() else {
        return;
    };
    for v in values {
        if v.len() >= MIN_SCRUBBED_LEN && v != MASK && !registry.contains(&v) {
            registry.push(v);
        }
    }
    registry.sort_by_key(|v| std::cmp::Reverse(v.len()));
}

/// `text` with every registered secret replaced by `***`.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let registry = match REGISTRY.read() {
        Ok(r) => r,
        Err(poisoned) => poisoned.into_inner(),
    };
    if !registry.iter().any(|s| text.contains(s.as_str())) {
        return Cow::Borrowed(text);
    }
    let mut out = text.to_string();
    for s in registry.iter() {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sensitive_names() {
        for secret in [
            "sasl.password",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl_key",
            "ssl.keystore.password",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.oauthbearer.extensions",
            "sasl.jaas.config",
            "tlsCertificateKeyFilePassword",
            "authMechanismProperties",
            "SASL.PASSWORD",
        ] {
            assert!(is_secret(secret), "{secret}");
        }
        for plain in [
            "security.protocol",
            "sasl.mechanism",
            "sasl.username",
            "ssl.ca.location",
            "replicaSet",
            "tls",
            "keepalive.enable",
        ] {
            assert!(!is_secret(plain), "{plain}");
        }
    }

    #[test]
    fn uris_lose_passwords_and_sensitive_options() {
        assert_eq!(
            mask_uri("mongodb://u:pw@h:1/?x=1"),
            "mongodb://u:***@h:1/?x=1"
        );
        assert_eq!(mask_uri("mongodb://h:1/"), "mongodb://h:1/");
        assert_eq!(
            mask_uri("mongodb://u:p@ss:w@rd@h1,h2/db?tls=true&tlsCertificateKeyFilePassword=kp&authMechanismProperties=AWS_SESSION_TOKEN:tok"),
            "mongodb://u:***@h1,h2/db?tls=true&tlsCertificateKeyFilePassword=***&authMechanismProperties=***"
        );
        // An `@` in the query is not mistaken for the end of the credentials.
        assert_eq!(
            mask_uri("mongodb://h/?authMechanismProperties=A:b@c"),
            "mongodb://h/?authMechanismProperties=***"
        );
        let found = uri_secrets(
            "mongodb://u:p%40ss@h/?authMechanismProperties=AWS_SESSION_TOKEN:tok3n,X:y&tlsCertificateKeyFilePassword=kp",
        );
        for s in ["p%40ss", "p@ss", "tok3n", "kp"] {
            assert!(found.contains(&s.to_string()), "{s} in {found:?}");
        }
    }

    #[test]
    fn registered_secrets_are_scrubbed_from_any_text() {
        register(["s3cr3t-value".to_string(), "ab".into()]);
        assert_eq!(
            scrub("error: auth failed for s3cr3t-value at ab"),
            "error: auth failed for *** at ab"
        );
        assert!(matches!(scrub("nothing here"), Cow::Borrowed(_)));
    }
}
