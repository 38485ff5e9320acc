//! From sources (defaults, a TOML file or string, `SLUICE__…` variables) to a typed config,
//! with error messages that never echo a secret: a TOML syntax error gives its line, column
//! and reason but not the line itself (it may be a `uri` with a password); a value of the wrong
//! type in a secret setting is described by its type only.

use figment::error::{Actual, Kind};
use figment::Figment;

use crate::secrets::{is_secret, MASK};
use crate::{Config, ConfigError};

/// Checks that `text` is TOML, reporting where and why it is not without quoting it.
pub(crate) fn check_syntax(text: &str, origin: &str) -> Result<(), ConfigError> {
    let Err(e) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    let place = match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |n| n + 1) + 1;
            format!("line {line}, column {column}")
        }
        None => "unknown position".into(),
    };
    Err(ConfigError::Parse(format!(
        "{origin} is not valid TOML: {place}: {} (the line is not shown: it may hold a secret)",
        e.message().trim_end()
    )))
}

/// Extracts and validates the config; every secret value of the result is registered for
/// scrubbing before anything can print it.
pub(crate) fn extract(figment: Figment) -> Result<Config, ConfigError> {
    let config: Config = figment
        .extract()
        .map_err(|e| ConfigError::Parse(describe(e)))?;
    crate::secrets::register(config.secret_values());
    config.validate()?;
    Ok(config)
}

/// Whether the setting at `path` (`["kafka", "properties", "sasl.password"]`) holds a secret.
fn secret_path(path: &[String]) -> bool {
    matches!(path, [m, u] if m == "mongo" && u == "uri") || path.iter().any(|p| is_secret(p))
}

/// The kind of a value, without the value.
fn type_of(actual: &Actual) -> &'static str {
    match actual {
        Actual::Bool(_) => "a boolean",
        Actual::Unsigned(_) | Actual::Signed(_) => "an integer",
        Actual::Float(_) => "a float",
        Actual::Char(_) | Actual::Str(_) => "a string",
        Actual::Seq => "an array",
        Actual::Map => "a table",
        _ => "another kind of value",
    }
}

/// Every error of `e`, one per line; those about a secret setting without its value.
fn describe(e: figment::Error) -> String {
    e.into_iter()
        .map(|mut e| {
            if secret_path(&e.path) {
                let what = match &e.kind {
                    Kind::InvalidType(a, expected) | Kind::InvalidValue(a, expected) => {
                        Some(format!("found {}, expected {expected}", type_of(a)))
                    }
                    Kind::Unsupported(a) | Kind::UnsupportedKey(a, _) => {
                        Some(format!("unsupported {}", type_of(a)))
                    }
                    Kind::Message(_) => Some("invalid value".into()),
                    _ => None,
                };
                if let Some(what) = what {
                    e.kind = Kind::Message(format!("{what} (value {MASK}: a secret)"));
                }
            }
            e.to_string()
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use crate::from_toml_str;

    #[test]
    fn a_syntax_error_gives_its_place_but_not_the_line() {
        let err = from_toml_str("[mongo]\nuri = \"mongodb://u:Pl4nted@h/\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("Pl4nted"), "{err}");
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn a_secret_of_the_wrong_type_is_described_by_its_type() {
        let err = from_toml_str("[kafka.properties]\n'sasl.password' = 987654321\n")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("987654321"), "{err}");
        assert!(
            err.contains("sasl.password") && err.contains("an integer"),
            "{err}"
        );
        // Other settings still show what was found.
        let err = from_toml_str("[chunk]\nmax_items = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("many"), "{err}");
    }
}
