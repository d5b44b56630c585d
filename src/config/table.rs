//! The outbox table's name: parsed once, always quoted when put into SQL, and the names
//! derived from it (indexes) kept within PostgreSQL's 63-byte identifier limit, stably.
//!
//! Invariant: a [`Table`] is only made by [`Table::parse_for`], which refuses control
//! characters, NUL, `'` and `$`; so its quoted form ([`quote_ident`], the one function that
//! puts a name into SQL text) cannot end the string literals and dollar quotes `migrate` puts
//! it in, and no newline can end a line comment near it.

use crate::error::{Error, Result};

/// A table name, optionally schema-qualified, always quoted when put into SQL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    schema: Option<String>,
    name: String,
}

impl Table {
    /// `--table`'s value: see [`Table::parse_for`].
    pub fn parse(s: &str) -> Result<Table> {
        Table::parse_for("--table", s)
    }

    /// `name` or `schema.name`, taken literally (case-sensitive, like a quoted identifier);
    /// `who` (the flag or variable) names it in errors.
    pub fn parse_for(who: &str, s: &str) -> Result<Table> {
        let bad =
            |why: &str| Error::Usage(format!("{who} `{}`: {why}", crate::log::escape_controls(s)));
        // A newline would end a line comment, and the rest of the name would be SQL; no
        // table needs one.
        if s.contains(char::is_control) {
            return Err(bad("control characters are not allowed in the table name"));
        }
        let parts: Vec<&str> = s.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(bad("expected NAME or SCHEMA.NAME"));
        }
        // `'` and `$` would end the string and dollar quotes `migrate` puts the name in.
        if s.contains(['\'', '$']) {
            return Err(bad("`'` and `$` are not allowed in the table name"));
        }
        match parts.as_slice() {
            [name] => Ok(Table {
                schema: None,
                name: name.to_string(),
            }),
            [schema, name] => Ok(Table {
                schema: Some(schema.to_string()),
                name: name.to_string(),
            }),
            _ => Err(bad("expected NAME or SCHEMA.NAME")),
        }
    }

    /// The table as SQL: `"schema"."name"` with embedded quotes doubled.
    pub fn quoted(&self) -> String {
        match &self.schema {
            Some(s) => format!("{}.{}", quote_ident(s), quote_ident(&self.name)),
            None => quote_ident(&self.name),
        }
    }

    /// An object named after the table (index names): `"name_suffix"`, quoted.
    pub fn quoted_derived(&self, suffix: &str) -> String {
        quote_ident(&self.derived_name(suffix))
    }

    /// `name` + `suffix` when that fits PostgreSQL's 63-byte identifiers. Otherwise the name
    /// is cut (on a character boundary) and an 8-hex-digit FNV-1a hash of the whole name goes
    /// before the suffix: PostgreSQL would cut the plain concatenation to the table's own
    /// (cut) name, and `CREATE INDEX IF NOT EXISTS` would then skip the index. The hash keeps
    /// the name the same on every run, so `migrate` stays idempotent.
    pub fn derived_name(&self, suffix: &str) -> String {
        let plain = format!("{}{suffix}", self.name);
        if plain.len() <= MAX_IDENT_LEN {
            return plain;
        }
        let hash = format!("_{:08x}", fnv1a32(self.name.as_bytes()));
        let mut end = MAX_IDENT_LEN
            .saturating_sub(suffix.len() + hash.len())
            .min(self.name.len());
        while !self.name.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}{hash}{suffix}", &self.name[..end])
    }
}

/// PostgreSQL's identifier limit (NAMEDATALEN - 1) in bytes.
const MAX_IDENT_LEN: usize = 63;

/// 32-bit FNV-1a: a small, stable hash (not for security).
fn fnv1a32(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.schema {
            Some(s) => write!(f, "{s}.{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_quoted() {
        let t = Table::parse("Sales.out\"box").unwrap();
        assert_eq!(t.quoted(), "\"Sales\".\"out\"\"box\"");
        assert_eq!(t.quoted_derived("_due_idx"), "\"out\"\"box_due_idx\"");
        assert!(Table::parse("a.").is_err());
    }

    #[test]
    fn control_characters_are_refused_and_shown_escaped() {
        for name in [
            "zz\nCREATE TABLE x(y int);--",
            "a\rb",
            "a\tb",
            "a\0b",
            "a\u{7f}",
            "a\u{85}",
        ] {
            let e = Table::parse_for("--archive", name).unwrap_err().to_string();
            assert!(
                e.starts_with("--archive `a") || e.starts_with("--archive `zz"),
                "{e}"
            );
            assert!(e.contains("control characters are not allowed"), "{e}");
            assert!(!e.contains(char::is_control), "{e:?}");
        }
        for name in ["o'brien", "a$b"] {
            assert!(Table::parse(name).is_err(), "{name}");
        }
        for name in ["Ünïcødé Events", "Mixed \"Quoted\" Name", "a--b", "s.t"] {
            assert!(Table::parse(name).is_ok(), "{name}");
        }
    }

    #[test]
    fn derived_names_fit_in_63_bytes_and_are_stable() {
        let short = Table::parse("orders").unwrap();
        assert_eq!(short.derived_name("_due_idx"), "orders_due_idx");
        // Exactly 63 bytes with the suffix: unchanged.
        let name = "a".repeat(63 - "_due_idx".len());
        let t = Table::parse(&name).unwrap();
        assert_eq!(t.derived_name("_due_idx"), format!("{name}_due_idx"));
        // Longer: cut, hashed, suffixed; never equal to the table's own (cut) name.
        let long = "x".repeat(70);
        let t = Table::parse(&format!("s.{long}")).unwrap();
        let d = t.derived_name("_due_idx");
        assert_eq!(d.len(), 63, "{d}");
        assert!(d.ends_with("_due_idx"), "{d}");
        assert_ne!(&d[..], &long[..63]);
        assert_eq!(d, t.derived_name("_due_idx"));
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c); // the published FNV-1a test vector
        assert_eq!(
            d,
            format!(
                "{}_{:08x}_due_idx",
                "x".repeat(46),
                fnv1a32(long.as_bytes())
            )
        );
        // Two long names that share their first 63 bytes get different index names.
        let other = Table::parse(&format!("{}y", "x".repeat(69))).unwrap();
        assert_ne!(other.derived_name("_due_idx"), d);
        // Multi-byte characters are never split.
        let t = Table::parse(&"é".repeat(40)).unwrap();
        let d = t.derived_name("_due_idx");
        assert!(d.len() <= 63 && d.ends_with("_due_idx"), "{d}");
        assert_eq!(t.quoted_derived("_due_idx"), format!("\"{d}\""));
    }
}
