//! Whether bytes from upstream carry a secret: as is, JSON-escaped (`\/`, `\"`, `\\`, `\uXXXX` in
//! either hex case, surrogate pairs) or percent-encoded (`%XX` in either hex case, `+` for a
//! space), and these nested (a percent-encoded URL inside a JSON string, an escaped `%`).
//!
//! Bytes without `\` or `%` cost one search per secret and one scan, as an exact match did.
//! Otherwise a decoded copy is searched too, decoded again (a few rounds at most) while it still
//! holds escapes.

/// Decoding rounds after the first search: a percent-encoded value inside a JSON string, with
/// the `%` itself escaped, takes two; one more covers encoders that stack up one level deeper.
const MAX_DECODE_ROUNDS: usize = 3;

/// Whether `haystack` holds one of `secrets`, as is or in an encoded form. Empty secrets never
/// match.
pub(crate) fn names_any(haystack: &[u8], secrets: &[&[u8]]) -> bool {
    let found = |text: &[u8]| secrets.iter().any(|secret| contains(text, secret));
    if found(haystack) {
        return true;
    }
    let mut decoded: Option<Vec<u8>> = None;
    for _ in 0..MAX_DECODE_ROUNDS {
        let text = decoded.as_deref().unwrap_or(haystack);
        if memchr::memchr2(b'\\', b'%', text).is_none() {
            return false;
        }
        match decode(text) {
            Some(next) if found(&next) => return true,
            Some(next) => decoded = Some(next),
            // Nothing decodable: no further round can find more.
            None => return false,
        }
    }
    false
}

/// `needle` in `haystack`, where a space of the needle also matches `+` (form encoding), so the
/// raw text and every decoded copy catch that form without a copy of their own.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    if needle.is_empty() || needle.len() > haystack.len() {
        return false;
    }
    if !needle.contains(&b' ') {
        // memchr's SIMD substring search: a window-by-window compare cost ~10k instructions
        // per answer.
        return memchr::memmem::find(haystack, needle).is_some();
    }
    haystack.windows(needle.len()).any(|window| {
        window
            .iter()
            .zip(needle)
            .all(|(&h, &n)| h == n || (n == b' ' && h == b'+'))
    })
}

/// One round of JSON-string unescaping and percent-decoding, together. `None` when nothing was
/// decoded. Malformed escapes are kept as they are.
fn decode(text: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len());
    let mut changed = false;
    let mut i = 0;
    while i < text.len() {
        match text[i] {
            b'%' => {
                if let Some(byte) = hex_byte(text.get(i + 1..i + 3)) {
                    out.push(byte);
                    changed = true;
                    i += 3;
                    continue;
                }
            }
            b'\\' => {
                let simple = match text.get(i + 1) {
                    Some(b'"') => Some(b'"'),
                    Some(b'\\') => Some(b'\\'),
                    Some(b'/') => Some(b'/'),
                    Some(b'b') => Some(0x08),
                    Some(b'f') => Some(0x0c),
                    Some(b'n') => Some(b'\n'),
                    Some(b'r') => Some(b'\r'),
                    Some(b't') => Some(b'\t'),
                    _ => None,
                };
                if let Some(byte) = simple {
                    out.push(byte);
                    changed = true;
                    i += 2;
                    continue;
                }
                if let Some((c, used)) = unicode_escape(&text[i..]) {
                    let mut utf8 = [0; 4];
                    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                    changed = true;
                    i += used;
                    continue;
                }
            }
            _ => {}
        }
        out.push(text[i]);
        i += 1;
    }
    changed.then_some(out)
}

/// `\uXXXX` (or a `\uD8xx\uDCxx` surrogate pair) at the start of `text`: the character and the
/// bytes it took. A lone surrogate is no character: `None`.
fn unicode_escape(text: &[u8]) -> Option<(char, usize)> {
    let unit = |at: usize| -> Option<u32> {
        if text.get(at..at + 2)? != b"\\u" {
            return None;
        }
        let hex = text.get(at + 2..at + 6)?;
        let high = hex_byte(Some(&hex[..2]))?;
        let low = hex_byte(Some(&hex[2..]))?;
        Some(u32::from(high) << 8 | u32::from(low))
    };
    let first = unit(0)?;
    match first {
        0xD800..=0xDBFF => {
            let second = unit(6).filter(|u| (0xDC00..=0xDFFF).contains(u))?;
            let code = 0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00);
            char::from_u32(code).map(|c| (c, 12))
        }
        0xDC00..=0xDFFF => None,
        _ => char::from_u32(first).map(|c| (c, 6)),
    }
}

/// Two hex digits, either case.
fn hex_byte(digits: Option<&[u8]>) -> Option<u8> {
    let digits = digits?;
    let value = |d: u8| (d as char).to_digit(16);
    Some((value(*digits.first()?)? * 16 + value(*digits.get(1)?)?) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk/live+Key 9é";

    fn leaks(body: &str) -> bool {
        names_any(body.as_bytes(), &[KEY.as_bytes()])
    }

    fn percent(text: &str, upper: bool) -> String {
        text.bytes()
            .map(|b| {
                if upper {
                    format!("%{b:02X}")
                } else {
                    format!("%{b:02x}")
                }
            })
            .collect()
    }

    fn json_unicode(text: &str, upper: bool) -> String {
        text.encode_utf16()
            .map(|u| {
                if upper {
                    format!("\\u{u:04X}")
                } else {
                    format!("\\u{u:04x}")
                }
            })
            .collect()
    }

    #[test]
    fn exact_and_encoded_forms_are_found() {
        assert!(leaks(&format!("{{\"k\":\"{KEY}\"}}")));
        assert!(leaks(&format!("x={}", KEY.replace('/', "\\/"))));
        assert!(leaks(&json_unicode(KEY, false)));
        assert!(leaks(&json_unicode(KEY, true)));
        assert!(leaks(&percent(KEY, false)));
        assert!(leaks(&percent(KEY, true)));
        // Form encoding: space as `+`, `+` and `/` as `%2B` and `%2F`, é as UTF-8 bytes.
        assert!(leaks("q=sk%2Flive%2BKey+9%C3%A9&x=1"));
        assert!(leaks("q=sk%2flive%2bKey%209%c3%a9"));
        // A percent-encoded URL in a JSON string whose encoder escaped `/` and `%`.
        assert!(leaks(
            "{\"u\":\"https:\\/\\/x\\/?k=sk\\u00252Flive\\u00252BKey+9\\u0025C3\\u0025A9\"}"
        ));
        // JSON in a URL parameter.
        assert!(leaks("q=%22sk%5C%2Flive%2BKey%209%5Cu00e9%22"));
    }

    #[test]
    fn supplementary_characters_decode_from_surrogate_pairs() {
        let key = "k-\u{1F600}-z";
        let escaped = "k-\\ud83d\\uDE00-z";
        assert!(names_any(escaped.as_bytes(), &[key.as_bytes()]));
        // Lone surrogates stay as written.
        assert_eq!(decode(b"\\ud83d-"), None);
        assert_eq!(decode(b"\\ude00"), None);
    }

    #[test]
    fn other_text_is_not_a_match() {
        assert!(!leaks("{\"k\":\"sk/live+Key 9e\"}"));
        assert!(!leaks("sk%2Flive%2BKey+9%C3"));
        assert!(!leaks("100% \\ not an escape \\u12 %zz %4"));
        assert!(!names_any(b"anything", &[b"".as_slice()]));
        assert!(!names_any(b"", &[KEY.as_bytes()]));
        // `+` stands for a space, never the other way round.
        assert!(!names_any(b"a b", &[b"a+b".as_slice()]));
        assert!(names_any(b"a+b", &[b"a+b".as_slice()]));
        assert!(names_any(b"a%2Bb", &[b"a+b".as_slice()]));
    }

    #[test]
    fn malformed_escapes_are_kept() {
        assert_eq!(decode(b"%zz\\q\\u12"), None);
        assert_eq!(decode(b"a%41\\u0042\\/").as_deref(), Some(&b"aAB/"[..]));
        assert_eq!(decode(b"%").as_deref(), None);
        assert_eq!(decode(b"%4").as_deref(), None);
    }
}
