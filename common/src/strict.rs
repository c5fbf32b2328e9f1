//! Reading what operators write — workload files (TOML), admin request
//! bodies (JSON) — with one set of rules for both: a field nobody knows is
//! refused by name, and every error names the field (a dotted path such as
//! `gpu.count`) and says what is allowed, in words rather than Rust types.
//!
//! Wire and stored types cannot refuse unknown fields themselves (newer
//! peers add fields; see [`crate::schema`]), so this is where strictness
//! lives: at the edge where a person's input comes in.

use serde::de::DeserializeOwned;

/// What is wrong with operator input: where, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct FieldError {
    /// Dotted path of the field (`file` for the whole input).
    pub field: String,
    pub reason: String,
}

/// Parses JSON strictly.
pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, FieldError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = strictly(&mut de, |e: serde_json::Error| {
        let line = (e.line() > 0).then(|| format!(" (line {}, column {})", e.line(), e.column()));
        (e.to_string(), line)
    })?;
    de.end().map_err(|e| FieldError { field: "body".into(), reason: format!("trailing characters: {e}") })?;
    Ok(value)
}

/// Parses TOML strictly.
pub fn toml<T: DeserializeOwned>(text: &str) -> Result<T, FieldError> {
    let line_of = |span: Option<std::ops::Range<usize>>| {
        span.map(|s| {
            let line = text.as_bytes()[..s.start.min(text.len())].iter().filter(|&&b| b == b'\n').count() + 1;
            format!(" (line {line})")
        })
    };
    let de = toml::Deserializer::parse(text).map_err(|e| FieldError {
        field: "file".into(),
        reason: format!("{}{}", e.message().trim(), line_of(e.span()).unwrap_or_default()),
    })?;
    strictly(de, |e: toml::de::Error| (e.message().to_string(), line_of(e.span())))
}

/// Deserializes through `serde_ignored` (unknown fields) and
/// `serde_path_to_error` (where an error happened).
fn strictly<'de, D, T, E>(de: D, describe: impl Fn(E) -> (String, Option<String>)) -> Result<T, FieldError>
where
    D: serde::Deserializer<'de, Error = E>,
    T: DeserializeOwned,
    E: serde::de::Error,
{
    let mut unknown: Vec<String> = Vec::new();
    let mut note = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let ignoring = serde_ignored::Deserializer::new(de, &mut note);
    let result: Result<T, serde_path_to_error::Error<E>> = serde_path_to_error::deserialize(ignoring);
    match result {
        Ok(value) => match unknown.into_iter().next() {
            Some(path) => Err(FieldError { field: path, reason: "unknown field".into() }),
            None => Ok(value),
        },
        Err(e) => {
            let path = e.path().to_string();
            let (message, position) = describe(e.into_inner());
            let (field, reason) = field_and_reason(&path, &message);
            Err(FieldError { field, reason: format!("{reason}{}", position.unwrap_or_default()) })
        }
    }
}

/// Names the field and rewrites serde's type vocabulary for people.
fn field_and_reason(path: &str, message: &str) -> (String, String) {
    let mut field =
        if path.is_empty() || path == "." || path == "?" { "file".to_string() } else { path.to_string() };
    let mut reason = message.trim().to_string();
    // serde_path_to_error stops at the struct holding an unknown field;
    // put the field's name into the path.
    if let Some(rest) = reason.strip_prefix("unknown field `") {
        if let Some((name, tail)) = rest.split_once('`') {
            field = join(&field, name);
            reason = format!("unknown field{tail}");
        }
    }
    if let Some(rest) = reason.strip_prefix("missing field `") {
        if let Some((name, _)) = rest.split_once('`') {
            field = join(&field, name);
            reason = "is required".to_string();
        }
    }
    (field, words(&reason))
}

/// `parent.name`, unless the path already ends with the name.
fn join(path: &str, name: &str) -> String {
    if path == "file" {
        name.to_string()
    } else if path == name || path.ends_with(&format!(".{name}")) {
        path.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// `expected u8` → `expected an integer from 0 to 255`, and so on.
pub fn words(message: &str) -> String {
    const TYPES: &[(&str, &str)] = &[
        ("expected u8", "expected an integer from 0 to 255"),
        ("expected u16", "expected an integer from 0 to 65535"),
        ("expected u32", "expected an integer from 0 to 4294967295"),
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected i32", "expected an integer"),
        ("expected i64", "expected an integer"),
        ("expected f32", "expected a number"),
        ("expected f64", "expected a number"),
        ("expected usize", "expected a whole number of 0 or more"),
        ("expected a boolean", "expected true or false"),
    ];
    let mut out = message.to_string();
    for (from, to) in TYPES {
        if let Some(at) = out.find(from) {
            // Only whole words: `expected u8` but not `expected u80`.
            let end = at + from.len();
            if out[end..].chars().next().is_none_or(|c| !c.is_ascii_alphanumeric()) {
                out.replace_range(at..end, to);
            }
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Inner {
        count: u8,
        #[serde(default)]
        linked: bool,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    enum Mode {
        #[serde(rename = "exclusive")]
        Exclusive { count: u8 },
        #[serde(rename = "none")]
        Nothing,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    struct Outer {
        name: String,
        gpu: Inner,
        #[serde(default)]
        modes: Vec<Mode>,
    }

    #[test]
    fn json_unknown_fields_are_refused_by_path() {
        let e = json::<Outer>(br#"{"name":"w","gpu":{"count":1},"foo":1}"#).unwrap_err();
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("foo", "unknown field"));
        let e = json::<Outer>(br#"{"name":"w","gpu":{"count":1,"colour":"red"}}"#).unwrap_err();
        assert_eq!(e.field, "gpu.colour");
        let e = json::<Outer>(br#"{"name":"w","gpu":{"count":1},"modes":[{"exclusive":{"count":1,"x":2}}]}"#)
            .unwrap_err();
        assert!(e.field.ends_with(".x"), "{e}");
        assert_eq!(
            json::<Outer>(br#"{"name":"w","gpu":{"count":1},"modes":["none"]}"#).unwrap().modes,
            [Mode::Nothing]
        );
    }

    #[test]
    fn type_errors_name_the_field_and_the_range_in_words() {
        let e = json::<Outer>(br#"{"name":"w","gpu":{"count":1000}}"#).unwrap_err();
        assert_eq!(e.field, "gpu.count");
        assert!(e.reason.contains("expected an integer from 0 to 255"), "{e}");
        assert!(!e.reason.contains("u8"), "{e}");
        let e = json::<Outer>(br#"{"name":"w"}"#).unwrap_err();
        assert!(e.field == "gpu" && e.reason.starts_with("is required"), "{e}");
        let e = json::<Outer>(br#"{"name":"w","gpu":{"count":1}} x"#).unwrap_err();
        assert_eq!(e.field, "body");
        let e = json::<Outer>(b"{").unwrap_err();
        assert_eq!(e.field, "file");
    }

    #[test]
    fn toml_follows_the_same_rules() {
        let e = toml::<Outer>("name = \"w\"\n[gpu]\ncount = 1000\n").unwrap_err();
        assert_eq!(e.field, "gpu.count");
        assert!(e.reason.contains("expected an integer from 0 to 255") && e.reason.contains("line 3"), "{e}");
        let e = toml::<Outer>("name = \"w\"\nfoo = 1\n[gpu]\ncount = 1\n").unwrap_err();
        assert_eq!((e.field.as_str(), e.reason.as_str()), ("foo", "unknown field"));
        let e = toml::<Outer>("name = \"w\"\n[gpu]\ncount = 1\nlinked = \"yes\"\n").unwrap_err();
        assert_eq!(e.field, "gpu.linked");
        assert!(e.reason.contains("expected true or false"), "{e}");
        let e = toml::<Outer>("name = = 1").unwrap_err();
        assert_eq!(e.field, "file");
        assert!(e.reason.contains("line 1"), "{e}");
    }

    #[test]
    fn words_only_replace_whole_type_names() {
        assert_eq!(words("expected u8"), "expected an integer from 0 to 255");
        assert_eq!(words("expected u80"), "expected u80");
    }
}
