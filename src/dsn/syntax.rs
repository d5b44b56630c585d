//! The text of a DSN where the driver's parser needs help: the pre-passes that take our TLS
//! parameters out of `key=value` strings and URIs before the driver reads the rest, quoting
//! for `to_conninfo`, and the driver's parse errors in our words.
//!
//! Invariant: errors name a parameter, never a value; a word that may be a stray value (a
//! password typed without its key) is never echoed.

use super::TLS_KEYS;
use crate::error::{Error, Result};
use std::str::FromStr;

/// The pre-pass for `key=value` strings: takes our TLS parameters out into `tls` and returns
/// the others as written, for the driver. It reads the driver's grammar (white space around
/// `=`, values bare or single-quoted, `\` escaping the next character) and reports syntax
/// errors itself, naming only known parameters: a stray word may be a password.
pub(super) fn take_tls_from_keyword_value(
    text: &str,
    tls: &mut Vec<(&'static str, String)>,
) -> Result<String> {
    let mut rest = String::new();
    let mut it = text.char_indices().peekable();
    let skip_ws = |it: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while it.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_ws(&mut it);
        let Some(&(start, _)) = it.peek() else {
            return Ok(rest);
        };
        while it
            .next_if(|&(_, c)| c != '=' && !c.is_whitespace())
            .is_some()
        {}
        let key = &text[start..it.peek().map_or(text.len(), |&(i, _)| i)];
        skip_ws(&mut it);
        if it.next_if(|&(_, c)| c == '=').is_none() {
            let after = if is_parameter(key) {
                format!(" after `{key}`")
            } else {
                String::new()
            };
            return Err(Error::Usage(format!(
                "invalid DSN: expected `=`{after} (use key=value pairs or a postgres:// URI)"
            )));
        }
        if key.is_empty() {
            return Err(Error::Usage("invalid DSN: empty parameter name".into()));
        }
        skip_ws(&mut it);
        let quoted = it.next_if(|&(_, c)| c == '\'').is_some();
        let mut closed = !quoted;
        let mut value = String::new();
        while let Some((_, c)) = it.next_if(|&(_, c)| quoted || !c.is_whitespace()) {
            match c {
                '\\' => value.extend(it.next().map(|(_, c)| c)),
                '\'' if quoted => {
                    closed = true;
                    break;
                }
                c => value.push(c),
            }
        }
        if !closed {
            return Err(Error::Usage(format!(
                "invalid DSN: unterminated quoted value for `{key}`"
            )));
        }
        let end = it.peek().map_or(text.len(), |&(i, _)| i);
        if TLS_KEYS.contains(&key) {
            set_tls(tls, key, value);
            continue;
        }
        // The driver refuses a bare empty value at the end; libpq takes it.
        if value.is_empty() {
            rest.push_str(&format!("{key}='' "));
        } else {
            rest.push_str(&text[start..end]);
            rest.push(' ');
        }
    }
}

/// The pre-pass for URIs: takes our TLS parameters out of the query string into `tls`.
/// The driver ends the user name and password at the first `@` anywhere in the URI; we end
/// them at the last `@` before the host, so that an unencoded `@` in a password stays in the
/// password (and out of the logged host): the others are percent-encoded for the driver, as
/// is any `@` in the query. An `@` in the path is refused: an unencoded `/` in a password
/// would make the rest of it the database name, which is logged.
pub(super) fn take_tls_from_uri(
    text: &str,
    tls: &mut Vec<(&'static str, String)>,
) -> Result<String> {
    let (head, query) = match text.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (text, None),
    };
    let body = head.find("://").map_or(0, |i| i + 3);
    let (authority, path) = match head[body..].find('/') {
        Some(i) => (&head[body..body + i], &head[body + i..]),
        None => (&head[body..], ""),
    };
    if path.contains('@') {
        return Err(Error::Usage(
            "invalid DSN: `@` after the host part; percent-encode `/`, `@` and `:` in the user name and password (%2F, %40, %3A)".into(),
        ));
    }
    let mut out = head[..body].to_string();
    match authority.rfind('@') {
        Some(i) => {
            out.push_str(&authority[..i].replace('@', "%40"));
            out.push_str(&authority[i..]);
        }
        None => out.push_str(authority),
    }
    out.push_str(path);
    let mut kept = Vec::new();
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').ok_or_else(|| {
            Error::Usage("invalid DSN: URI query parameters must be key=value".into())
        })?;
        let key = decode(k, "a parameter name")?;
        if !TLS_KEYS.contains(&key.as_str()) {
            kept.push(pair.replace('@', "%40"));
            continue;
        }
        set_tls(tls, &key, decode(v, &key)?);
    }
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    Ok(out)
}

/// Sets one of our TLS parameters (`key` is one of `TLS_KEYS`); the last one wins.
fn set_tls(tls: &mut Vec<(&'static str, String)>, key: &str, value: String) {
    if let Some(key) = TLS_KEYS.iter().find(|k| **k == key) {
        tls.retain(|(k, _)| k != key);
        tls.push((key, value));
    }
}

fn decode(s: &str, what: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::Usage(format!("invalid DSN: bad percent-encoding in {what}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Usage(format!("invalid DSN: {what} is not UTF-8")))
}

/// A driver parse error as ours. The driver's messages name the option, never its value;
/// an unknown one is echoed only when it looks like a parameter name.
pub(super) fn parse_error(e: &postgres::Error) -> Error {
    match unknown_option(e) {
        Some(key) if name_like(&key) => {
            Error::Usage(format!("invalid DSN: unknown parameter `{key}`"))
        }
        Some(_) => Error::Usage("invalid DSN: unknown parameter".into()),
        None => Error::Usage(format!("invalid DSN: {}", crate::error::describe_pg(e))),
    }
}

/// The key of a driver error for an unknown option (its message names the key).
fn unknown_option(e: &postgres::Error) -> Option<String> {
    let cause = std::error::Error::source(e)?.to_string();
    let key = cause.strip_prefix("unknown option `")?.strip_suffix('`')?;
    Some(key.to_string())
}

/// A name the driver or this module knows, and so safe to echo.
fn is_parameter(key: &str) -> bool {
    name_like(key)
        && (TLS_KEYS.contains(&key)
            || postgres::Config::from_str(&format!("{key}=''"))
                .err()
                .and_then(|e| unknown_option(&e))
                .is_none())
}

/// Only names like these are echoed in errors: anything else may be a stray value.
fn name_like(key: &str) -> bool {
    !key.is_empty() && key.len() <= 40 && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

pub(super) fn join_conninfo<'a>(
    params: impl Iterator<Item = &'a (&'static str, String)>,
) -> String {
    let mut out = String::new();
    for (k, v) in params {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(k);
        out.push('=');
        out.push_str(&quote_value(v));
    }
    out
}

pub(super) fn quote_value(v: &str) -> String {
    if !v.is_empty() && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\') {
        return v.to_string();
    }
    let mut s = String::with_capacity(v.len() + 2);
    s.push('\'');
    for c in v.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}
