//! From sources (defaults, a TOML file or string, `SLUICE__…` variables) to a typed config,
//! with error messages that never echo a secret: a TOML syntax error gives its line, column
//! and reason but not the line itself (it may be a `uri` with a password); a value of the wrong
//! type in a secret setting is described by its type only.

use figment::error::{Actual, Kind};
use figment::providers::{Format, Toml};
use figment::{Figment, Provider};

use crate::secrets::{is_secret, MASK};
use crate::{Config, ConfigError};

/// Checks that `text` is TOML — with figment's own parser, so that nothing it would refuse
/// later (quoting the line) gets past — reporting where and why it is not, without the line.
pub(crate) fn check_syntax(text: &str, origin: &str) -> Result<(), ConfigError> {
    let Err(e) = Toml::string(text).data() else {
        return Ok(());
    };
    let reasons: Vec<String> = e
        .into_iter()
        .map(|e| match e.kind {
            Kind::Message(m) => without_source_lines(&m),
            other => other.to_string(),
        })
        .collect();
    Err(ConfigError::Parse(format!(
        "{origin} is not valid TOML: {} (the line is not shown: it may hold a secret)",
        reasons.join("; ")
    )))
}

/// A TOML parser's message without the lines it quotes from the source (`2 | uri = "…"`) and
/// the caret under them: only the position and the reason remain.
fn without_source_lines(message: &str) -> String {
    message
        .lines()
        .filter(|line| {
            let rest = line
                .trim_start()
                .trim_start_matches(|c: char| c.is_ascii_digit());
            !rest.trim_start().starts_with('|') && !line.trim().is_empty()
        })
        .collect::<Vec<_>>()
        .join(": ")
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

/// Whether the setting at `path` (`["kafka", "properties", "sasl.password"]`) holds or may
/// hold a secret: anything in `[mongo]` (its `uri`, or the section given as a string), the
/// `[kafka]` section or its `properties` as a whole, and every secret-named setting.
fn secret_path(path: &[String]) -> bool {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    matches!(p[..], ["mongo", ..] | ["kafka"] | ["kafka", "properties"])
        || path.iter().any(|p| is_secret(p))
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
        for text in [
            "[mongo]\nuri = \"mongodb://u:Pl4nted@h/\n",
            // TOML 1.1 (a newer parser accepts it), refused by figment's parser.
            "mongo = { uri = \"mongodb://u:Pl4nted@h/\",\n database = \"x\" }\n",
        ] {
            let err = from_toml_str(text).unwrap_err().to_string();
            assert!(!err.contains("Pl4nted"), "{err}");
            assert!(err.contains("line"), "{err}");
        }
    }

    #[test]
    fn a_section_of_the_wrong_type_does_not_echo_it() {
        for text in [
            "mongo = \"mongodb://u:Pl4nted@h/\"\n",
            "[kafka]\nproperties = \"sasl.password=Pl4nted\"\n",
            "kafka = \"Pl4nted\"\n",
        ] {
            let err = from_toml_str(text).unwrap_err().to_string();
            assert!(!err.contains("Pl4nted"), "{err}");
        }
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
