//! How a route target is shown wherever people or tools see it: log lines (`worker ready`,
//! `is dead`), the `route` label of the metrics, start-up errors and stored errors.
//!
//! A webhook URL (any `scheme://…`) loses its userinfo and fragment, and its query keeps the
//! parameter names only (`https://h/x?token=REDACTED`): a receiver's token often travels there. Everything else
//! (`stdout`, `exec:`/`pipe:` commands, compiled-in names) is shown as written: a command
//! line is visible to every local user anyway (argv), so its secrets belong in the
//! environment, not in the route.
//!
//! Invariant: a target reaches text only through [`route_target`]; the router stores the
//! shown form, so its users cannot pick the raw one by mistake.

/// What a query value is shown as.
pub(crate) const REDACTED: &str = "REDACTED";

/// The target as it may be shown: for a URL (a webhook's, or any `scheme://`), no userinfo,
/// no fragment, query values replaced by [`REDACTED`] (an empty value stays empty; an item
/// without `=` is replaced whole). Works on text that is not a valid URL too (the errors
/// about refused ones).
pub fn route_target(target: &str) -> String {
    let Some(scheme_len) = url_scheme_len(target) else {
        return target.to_string();
    };
    let (scheme, rest) = target.split_at(scheme_len);
    let rest = rest.split('#').next().unwrap_or_default();
    let (head, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let mut out = String::with_capacity(target.len());
    out.push_str(scheme);
    out.push_str(without_userinfo(head));
    if let Some(q) = query {
        out.push('?');
        for (i, item) in q.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match item.split_once('=') {
                Some((name, value)) => {
                    out.push_str(name);
                    out.push('=');
                    if !value.is_empty() {
                        out.push_str(REDACTED);
                    }
                }
                None if item.is_empty() => {}
                None => out.push_str(REDACTED),
            }
        }
    }
    out
}

/// Whether a URL carries `user[:password]@` (as [`route_target`] finds it).
pub(crate) fn has_userinfo(url: &str) -> bool {
    let Some(scheme_len) = url_scheme_len(url) else {
        return false;
    };
    let head = url[scheme_len..]
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    without_userinfo(head).len() != head.len()
}

/// The length of `scheme://` when `target` starts like a URL (any scheme: a refused
/// `ftp://user:password@…` must not show its password either); `exec:` and `pipe:` commands
/// are not URLs, whatever follows their colon.
fn url_scheme_len(target: &str) -> Option<usize> {
    let colon = target.find("://")?;
    let scheme = &target[..colon];
    let mut chars = scheme.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let command = ["exec", "pipe"]
        .iter()
        .any(|c| scheme.eq_ignore_ascii_case(c));
    (well_formed && !command).then_some(colon + 3)
}

/// `host:port/path` of `userinfo@host:port/path`. The userinfo ends at the last `@` of the
/// authority; when the authority is not a plain `host[:port]` (a password with a `/` in it
/// makes `user:pa` look like the authority), everything up to the last `@` before the query
/// goes, so that a refused URL never shows its password.
fn without_userinfo(head: &str) -> &str {
    let authority = &head[..head.find('/').unwrap_or(head.len())];
    if let Some(at) = authority.rfind('@') {
        return &head[at + 1..];
    }
    let after_host = &authority[authority.rfind(']').map_or(0, |i| i + 1)..];
    let port_ok = after_host
        .split_once(':')
        .is_none_or(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()));
    match head.rfind('@') {
        Some(at) if !port_ok => &head[at + 1..],
        _ => head,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_and_userinfo_are_not_shown() {
        let cases = [
            ("http://h/x?token=SECRET", "http://h/x?token=REDACTED"),
            (
                "HTTPS://u:pw@h:8443/x?a=1&b=&c&&d=2#frag",
                "HTTPS://h:8443/x?a=REDACTED&b=&REDACTED&&d=REDACTED",
            ),
            ("https://h/x#token=SECRET", "https://h/x"),
            ("https://h/x?", "https://h/x?"),
            ("https://h", "https://h"),
            ("http://[::1]:80/@me?k=v", "http://[::1]:80/@me?k=REDACTED"),
            ("http://h:8080/users/@me", "http://h:8080/users/@me"),
            // A password with `/` or `@` in it, which the URL check refuses.
            ("http://user:pa/ss@h/x", "http://h/x"),
            ("http://user:p@ss@h/x", "http://h/x"),
            ("http://u:pw@/x", "http:///x"),
            ("ftp://u:pw@h/x", "ftp://h/x"),
            ("exec://bin/x?a=1", "exec://bin/x?a=1"),
            ("stdout", "stdout"),
            ("exec:curl http://h/?token=x", "exec:curl http://h/?token=x"),
            ("pipe:/bin/pub --key k", "pipe:/bin/pub --key k"),
            ("orders", "orders"),
            ("", ""),
        ];
        for (target, shown) in cases {
            assert_eq!(route_target(target), shown, "{target}");
        }
        assert!(has_userinfo("http://user:pa/ss@h/x") && has_userinfo("https://u@h"));
        assert!(!has_userinfo("http://h:8080/users/@me") && !has_userinfo("exec:a@b"));
        let weird = "http://u:SECRET@\u{e9}\u{1b}/?x=SECRET";
        assert!(!route_target(weird).contains("SECRET"));
    }
}
