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
    let after = &uri[scheme_end..];
    // Credentials end at the last `@` before the authority ends. A password may hold `@`, `:`
    // and (unencoded, against the spec) `?` or `/`, and an option may hold `@`: the authority
    // ends at the later of the first `/` and the first `?`, or with the string when there is
    // no `/` (then an `@` in the options masks more than needed, never less).
    let (slash, question) = (after.find('/'), after.find('?'));
    let bound = match (slash, question) {
        (Some(s), Some(q)) => s.max(q),
        (Some(s), None) => s,
        (None, _) => after.len(),
    };
    let (userinfo, hosts_and_rest) = match after[..bound].rfind('@') {
        Some(at) => (Some(&after[..at]), &after[at + 1..]),
        None => (None, after),
    };
    let (rest, query) = match hosts_and_rest.find('?') {
        Some(q) => (&hosts_and_rest[..q], Some(&hosts_and_rest[q + 1..])),
        None => (hosts_and_rest, None),
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
                // `AWS_SESSION_TOKEN:…,SERVICE_NAME:mongodb`: the secret parts alone too
                // (scrubbing `mongodb` or `true` everywhere would garble every log line).
                for pair in value.split(',') {
                    if let Some((n, v)) = pair.split_once(':') {
                        if is_secret(n) {
                            found.push(v.to_string());
                        }
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

/// The forms a secret takes in text: as is, escaped in a JSON string (JSON logs) and in a
/// Rust `Debug` string (`?` fields), and the values of its `key=value` parts
/// (`sasl.oauthbearer.config`, `…extensions`), which a message may quote alone.
fn forms(v: String) -> Vec<String> {
    let mut out = Vec::new();
    let json = serde_json::to_string(&v).unwrap_or_default();
    out.push(json.trim_matches('"').to_string());
    let debug = format!("{v:?}");
    out.push(debug.trim_matches('"').to_string());
    if v.contains('=') {
        for part in v.split([',', ' ', '\t', '\n']) {
            if let Some((_, value)) = part.split_once('=') {
                out.push(value.to_string());
            }
        }
    }
    out.push(v);
    out
}

/// Adds secret values to the set [`scrub`] removes from any text.
pub fn register<I: IntoIterator<Item = String>>(values: I) {
    let Ok(mut registry) = REGISTRY.write() else {
        return;
    };
    for v in values.into_iter().flat_map(forms) {
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
        // Unencoded `?` and `/` in a password (invalid, but then quoted by the driver).
        assert_eq!(mask_uri("mongodb://u:pa?ss@h/"), "mongodb://u:***@h/");
        assert_eq!(mask_uri("mongodb://u:p/w@h/?x=1"), "mongodb://u:***@h/?x=1");
        assert!(uri_secrets("mongodb://u:pa?ss@h/").contains(&"pa?ss".to_string()));
        let found = uri_secrets(
            "mongodb://u:p%40ss@h/?authMechanismProperties=AWS_SESSION_TOKEN:tok3n,X:y&tlsCertificateKeyFilePassword=kp",
        );
        for s in ["p%40ss", "p@ss", "tok3n", "kp"] {
            assert!(found.contains(&s.to_string()), "{s} in {found:?}");
        }
        assert!(
            !found.contains(&"y".to_string()),
            "X is no secret: {found:?}"
        );
    }

    #[test]
    fn registered_secrets_are_scrubbed_from_any_text() {
        register(["s3cr3t-value".to_string(), "ab".into()]);
        assert_eq!(
            scrub("error: auth failed for s3cr3t-value at ab"),
            "error: auth failed for *** at ab"
        );
        register([
            "q\"uo\\te".to_string(),
            "principal=app scope=Sc0pe-s3cret".into(),
        ]);
        assert_eq!(scrub(r#"{"v":"q\"uo\\te"}"#), r#"{"v":"***"}"#);
        assert_eq!(scrub("bad scope Sc0pe-s3cret"), "bad scope ***");
        assert!(matches!(scrub("nothing here"), Cow::Borrowed(_)));
    }
}
