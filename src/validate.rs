//! Input rules for both routes. Every invalid field is reported at once, by name; nothing is
//! forwarded until the whole input is valid.

use serde::Serialize;
use uuid::Uuid;

use crate::config::{KIZEN_SOURCES, PresignConfig, values::is_media_type};

/// One invalid input field: validation's error, reported with every other invalid field at once.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FieldError {
    /// The parameter's name (a client-chosen one shortened and stripped of anything unprintable).
    pub field: String,
    /// What is wrong with it, from a fixed vocabulary.
    pub code: FieldErrorCode,
    /// What is wrong with it, for a human, naming the field.
    pub detail: String,
}

/// What can be wrong with one field; serialized as its snake_case name.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FieldErrorCode {
    /// Absent or empty.
    Required,
    /// Given more than once.
    Duplicate,
    /// Not a parameter of this route.
    UnknownField,
    /// Malformed.
    Invalid,
    /// Well-formed, but outside what this gateway's configuration allows.
    NotAllowed,
}

impl FieldErrorCode {
    /// Every code.
    pub const ALL: [FieldErrorCode; 5] = [
        Self::Required,
        Self::Duplicate,
        Self::UnknownField,
        Self::Invalid,
        Self::NotAllowed,
    ];

    /// The code as the problem body spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Required => "required",
            Self::Duplicate => "duplicate",
            Self::UnknownField => "unknown_field",
            Self::Invalid => "invalid",
            Self::NotAllowed => "not_allowed",
        }
    }
}

impl FieldError {
    /// An invalid `field`.
    pub fn new(field: &str, code: FieldErrorCode, detail: impl Into<String>) -> Self {
        Self {
            field: field.to_owned(),
            code,
            detail: detail.into(),
        }
    }
}

/// A validated presign request, ready to be re-encoded upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresignInput {
    /// The file's media type, `type/subtype`, allowed by `presign.allowed_content_types`.
    pub contenttype: String,
    /// The file's bare name (no `/`, `\`, `.` or `..`), at most 255 bytes, no control characters.
    pub filename: String,
    /// One of `presign.allowed_sources`: where in Kizen the file belongs.
    pub source: String,
}

/// A validated confirmation. `business_id` from the client is read only to be discarded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfirmInput {
    /// The upload to confirm: its `s3object_id` from the presign answer.
    pub uuid: Uuid,
    /// The S3 key the presign issued (`fields.key`); must match the recorded one exactly.
    pub key: String,
    /// The file's display name, under the same rules as a presign's `filename`.
    pub name: String,
    /// The ETag S3 answered the browser's upload with: at most 256 visible ASCII characters.
    pub etag: String,
    /// Whether the client asks for a public file; honoured only for `confirm.public_sources`.
    pub is_public: bool,
}

const MAX_NAME_BYTES: usize = 255;
const MAX_KEY_BYTES: usize = 1024;
const MAX_ETAG_BYTES: usize = 256;

/// The fields of one request, by name: a short list (a route has at most six), cheaper to search
/// than to hash.
struct Fields<'a>(Vec<(&'a str, String)>);

impl<'a> Fields<'a> {
    fn get(&self, name: &str) -> Option<&String> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Sets `name` (the last value given wins); `true` when it was given before.
    fn insert(&mut self, name: &'a str, value: String) -> bool {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => {
                slot.1 = value;
                true
            }
            None => {
                self.0.push((name, value));
                false
            }
        }
    }
}

/// Splits `a=1&b=2` into fields, refusing duplicates and names outside `known`.
fn parse_fields<'a>(raw: &str, known: &[&'a str], errors: &mut Vec<FieldError>) -> Fields<'a> {
    let mut fields = Fields(Vec::with_capacity(known.len()));
    for (name, value) in form_urlencoded::parse(raw.as_bytes()) {
        match known.iter().find(|k| **k == name) {
            Some(known_name) => {
                if fields.insert(known_name, value.into_owned())
                    && !errors.iter().any(|e| e.field == *known_name)
                {
                    errors.push(FieldError::new(
                        known_name,
                        FieldErrorCode::Duplicate,
                        format!("{known_name} is given more than once"),
                    ));
                }
            }
            None => {
                let shown = display_name(&name);
                if !errors.iter().any(|e| e.field == shown) {
                    errors.push(FieldError::new(
                        &shown,
                        FieldErrorCode::UnknownField,
                        format!("{shown} is not a parameter of this route"),
                    ));
                }
            }
        }
    }
    fields
}

/// A client-chosen parameter name, shortened and stripped of anything unprintable.
fn display_name(name: &str) -> String {
    name.chars()
        .filter(|c| !c.is_control() && !is_bidi_control(*c))
        .take(64)
        .collect()
}

fn required<'f>(
    fields: &'f Fields<'_>,
    name: &str,
    errors: &mut Vec<FieldError>,
) -> Option<&'f str> {
    match fields.get(name) {
        Some(value) if !value.is_empty() => Some(value),
        _ => {
            if !errors.iter().any(|e| e.field == name) {
                errors.push(FieldError::new(
                    name,
                    FieldErrorCode::Required,
                    format!("{name} is required"),
                ));
            }
            None
        }
    }
}

/// Characters that reorder displayed text: a filename must not lie about its extension.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

/// Joins names for a message: "a, b, c".
fn listed<T: std::fmt::Display>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Why a file name is refused, if it is.
fn file_name_problem(name: &str) -> Option<&'static str> {
    if name.len() > MAX_NAME_BYTES {
        Some("must be at most 255 bytes")
    } else if name == "." || name == ".." {
        Some("must not be \".\" or \"..\"")
    } else if name.contains(['/', '\\']) {
        Some("must not contain / or \\")
    } else if name.chars().any(|c| c.is_control() || is_bidi_control(c)) {
        Some("must not contain control or bidirectional-override characters")
    } else if name.contains('\u{FFFD}') {
        Some("must be valid UTF-8")
    } else {
        None
    }
}

/// Validates a presign's query string against `config`, reporting every invalid field at once.
pub fn presign(
    query: Option<&str>,
    config: &PresignConfig,
) -> Result<PresignInput, Vec<FieldError>> {
    let mut errors = Vec::new();
    let fields = parse_fields(
        query.unwrap_or(""),
        &["contenttype", "filename", "source"],
        &mut errors,
    );

    let contenttype = required(&fields, "contenttype", &mut errors);
    if let Some(value) = contenttype {
        if !is_media_type(value) {
            errors.push(FieldError::new(
                "contenttype",
                FieldErrorCode::Invalid,
                "contenttype must look like type/subtype, e.g. image/png",
            ));
        } else if !config.allowed_content_types.is_empty()
            && !config
                .allowed_content_types
                .iter()
                .any(|pattern| pattern.matches(value))
        {
            errors.push(FieldError::new(
                "contenttype",
                FieldErrorCode::NotAllowed,
                format!(
                    "contenttype must match one of: {}",
                    listed(
                        &config
                            .allowed_content_types
                            .iter()
                            .map(|p| p.as_str())
                            .collect::<Vec<_>>()
                    )
                ),
            ));
        }
    }

    let filename = required(&fields, "filename", &mut errors);
    if let Some(problem) = filename.and_then(file_name_problem) {
        errors.push(FieldError::new(
            "filename",
            FieldErrorCode::Invalid,
            format!("filename {problem}"),
        ));
    }

    let source = required(&fields, "source", &mut errors);
    if let Some(value) = source {
        if !KIZEN_SOURCES.contains(&value) {
            errors.push(FieldError::new(
                "source",
                FieldErrorCode::Invalid,
                format!("source must be one of: {}", KIZEN_SOURCES.join(", ")),
            ));
        } else if !config.allowed_sources.iter().any(|s| s.as_str() == value) {
            errors.push(FieldError::new(
                "source",
                FieldErrorCode::NotAllowed,
                format!("source must be one of: {}", listed(&config.allowed_sources)),
            ));
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(PresignInput {
        contenttype: contenttype.unwrap_or_default().to_owned(),
        filename: filename.unwrap_or_default().to_owned(),
        source: source.unwrap_or_default().to_owned(),
    })
}

/// `application/x-www-form-urlencoded`, with or without a charset parameter.
pub fn is_form_content_type(value: Option<&http::HeaderValue>) -> bool {
    value
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| {
            mime.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        })
}

/// Validates a confirmation's form body, reporting every invalid field at once.
pub fn confirm(body: &[u8]) -> Result<ConfirmInput, Vec<FieldError>> {
    let mut errors = Vec::new();
    let Ok(body) = std::str::from_utf8(body) else {
        return Err(vec![FieldError::new(
            "body",
            FieldErrorCode::Invalid,
            "the body must be UTF-8 form data",
        )]);
    };
    let fields = parse_fields(
        body,
        &["uuid", "key", "name", "etag", "is_public", "business_id"],
        &mut errors,
    );

    let uuid =
        required(&fields, "uuid", &mut errors).and_then(|value| match Uuid::try_parse(value) {
            Ok(uuid) => Some(uuid),
            Err(_) => {
                errors.push(FieldError::new(
                    "uuid",
                    FieldErrorCode::Invalid,
                    "uuid must be a UUID",
                ));
                None
            }
        });

    let key = required(&fields, "key", &mut errors);
    if let Some(key) = key
        && (key.len() > MAX_KEY_BYTES || key.chars().any(char::is_control))
    {
        errors.push(FieldError::new(
            "key",
            FieldErrorCode::Invalid,
            "key must be at most 1024 bytes without control characters",
        ));
    }

    let name = required(&fields, "name", &mut errors);
    if let Some(problem) = name.and_then(file_name_problem) {
        errors.push(FieldError::new(
            "name",
            FieldErrorCode::Invalid,
            format!("name {problem}"),
        ));
    }

    let etag = required(&fields, "etag", &mut errors);
    if let Some(etag) = etag
        && (etag.len() > MAX_ETAG_BYTES || !etag.bytes().all(|b| b.is_ascii_graphic()))
    {
        errors.push(FieldError::new(
            "etag",
            FieldErrorCode::Invalid,
            "etag must be at most 256 visible ASCII characters",
        ));
    }

    let is_public = match fields.get("is_public").map(|v| v.to_ascii_lowercase()) {
        None => false,
        Some(v) if v == "true" || v == "1" => true,
        Some(v) if v == "false" || v == "0" || v.is_empty() => false,
        Some(_) => {
            errors.push(FieldError::new(
                "is_public",
                FieldErrorCode::Invalid,
                "is_public must be true or false",
            ));
            false
        }
    };

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(ConfirmInput {
        uuid: uuid.expect("no errors"),
        key: key.unwrap_or_default().to_owned(),
        name: name.unwrap_or_default().to_owned(),
        etag: etag.unwrap_or_default().to_owned(),
        is_public,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> PresignConfig {
        crate::config::Config::from_toml(crate::testing::MINIMAL_TOML)
            .unwrap()
            .presign
    }

    #[test]
    fn valid_presign_passes() {
        let input = presign(
            Some("contenttype=image%2Fpng&filename=a%20b.png&source=field_value"),
            &config(),
        )
        .unwrap();
        assert_eq!(input.filename, "a b.png");
        assert_eq!(input.contenttype, "image/png");
    }

    #[test]
    fn every_invalid_field_is_listed() {
        let errors =
            presign(Some("contenttype=png&filename=..&source=nope"), &config()).unwrap_err();
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["contenttype", "filename", "source"]);
    }

    #[test]
    fn bidi_and_separators_are_refused() {
        for bad in [
            "a%2Fb",
            "a%5Cb",
            "evil%E2%80%AEgnp.exe",
            "a%00b",
            "a%0Ab",
            ".",
        ] {
            let query = format!("contenttype=image/png&filename={bad}&source=field_value");
            let errors = presign(Some(&query), &config()).unwrap_err();
            assert_eq!(errors[0].field, "filename", "{bad}");
        }
    }

    #[test]
    fn duplicates_and_unknown_fields() {
        let errors = presign(
            Some("contenttype=a/b&contenttype=c/d&filename=x&source=field_value&x=1"),
            &config(),
        )
        .unwrap_err();
        assert_eq!(errors[0].code, FieldErrorCode::Duplicate);
        assert_eq!(errors[1].code, FieldErrorCode::UnknownField);
    }
}
