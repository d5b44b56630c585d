//! Splitting an `exec:` or `pipe:` command line into words, the way a POSIX shell would (but
//! with no expansions: there is no shell). A unit test compares the result with `sh` itself.

use crate::error::{Error, Result};

/// Splits a command line into words the way a POSIX shell does, without expansions: white
/// space separates words; single quotes keep everything literal; inside double quotes a
/// backslash escapes only `$`, `` ` ``, `"`, `\` and a newline (elsewhere it stays);
/// outside quotes a backslash escapes any character, and backslash-newline is removed.
/// No variables, globs, comments or pipes: there is no shell.
pub(crate) fn split_words(s: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => return Err(unclosed("single quote")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some('\n') => {}
                            Some(c @ ('$' | '`' | '"' | '\\')) => cur.push(c),
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => return Err(unclosed("double quote")),
                        },
                        Some(c) => cur.push(c),
                        None => return Err(unclosed("double quote")),
                    }
                }
            }
            '\\' => match chars.next() {
                // A line continuation: neither a character nor a word break.
                Some('\n') => {}
                Some(c) => {
                    in_word = true;
                    cur.push(c);
                }
                None => return Err(Error::Usage("exec command: trailing backslash".into())),
            },
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn unclosed(what: &str) -> Error {
    Error::Usage(format!("exec command: unterminated {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split_words(r#"sh -c 'cat >> "/tmp/a b"' x\ y "q\"d""#).unwrap(),
            vec!["sh", "-c", r#"cat >> "/tmp/a b""#, "x y", "q\"d"]
        );
        assert!(split_words("sh 'oops").is_err());
        assert!(split_words("sh \"oops").is_err());
        assert!(split_words("sh oops\\").is_err());
        assert_eq!(split_words("  ").unwrap(), Vec::<String>::new());
        assert_eq!(split_words("a ''").unwrap(), vec!["a", ""]);
        assert_eq!(
            split_words(r#""a\d+" "C:\temp""#).unwrap(),
            vec![r"a\d+", r"C:\temp"]
        );
    }

    /// The words `sh` itself makes of `input` (after `printf`'s format argument).
    fn sh_words(input: &str) -> Vec<String> {
        let script = format!("printf '[%s]\\n' START {input}");
        let out = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run sh: {e}"));
        assert!(out.status.success(), "sh -c {script:?}: {out:?}");
        let text = String::from_utf8(out.stdout).expect("UTF-8");
        let body = text
            .strip_prefix("[START]\n")
            .unwrap_or_else(|| panic!("{script:?} printed {text:?}"));
        if body.is_empty() {
            return Vec::new();
        }
        let body = body
            .strip_prefix('[')
            .and_then(|b| b.strip_suffix("]\n"))
            .unwrap_or_else(|| panic!("{script:?} printed {text:?}"));
        body.split("]\n[").map(str::to_string).collect()
    }

    #[test]
    fn split_words_agrees_with_sh() {
        // Inputs without expansions: no unquoted or double-quoted `$`, no backquotes, globs,
        // `~` or `#` at the start of a word.
        let inputs = [
            r#""a\d+""#,
            r#""C:\temp""#,
            r"'s\q'",
            r"a\ b",
            r#""x\"y""#,
            r#""\\""#,
            r#""\$HOME""#,
            "''",
            r#""""#,
            r#"a"b"'c'"#,
            r"\'",
            r#"mixed "a\d+"'s\q'\ x "C:\temp\new" end"#,
            r"\a\b\\c",
            r#""\a\b\\c\`""#,
            r#"'\' "\'" \""#,
            "a\\\nb",
            "\"a\\\nb\"",
            "'a\\\nb'",
            "\"line\nbreak\" 'two\nlines'",
            "  spaced\t words  ",
            r#"x"" ""y '' "" z"#,
            r#""it's" 'say "hi"'"#,
            r"\ lead trail\ ",
            r#""a b"c\ d'e f'"#,
            r#"sh -c 'echo \"x\"'"#,
        ];
        for input in inputs {
            assert_eq!(
                split_words(input).unwrap_or_else(|e| panic!("{input:?}: {e}")),
                sh_words(input),
                "input {input:?}"
            );
        }
    }
}
