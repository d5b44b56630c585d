//! An admin command's options read by their definitions (`defs::commands`), never by a name
//! typed twice: `raw.whole(&defs::LIMIT)` is the value given, else the table's default,
//! checked by the option's kind.
//!
//! Invariant: a value reaches a command only through its flag's check, so a range or a
//! default exists in the flag table alone.

use super::defs::Flag;
use super::RawArgs;
use crate::error::Result;

impl RawArgs {
    /// The text given to `flag` (None: not given; a text option has no default).
    pub fn text(&self, flag: &Flag) -> Option<&str> {
        self.get(flag.name())
    }

    /// Whether the switch `flag` was given.
    pub fn switch(&self, flag: &Flag) -> bool {
        self.has(flag.name())
    }

    /// `flag`'s whole number: as given, else its default (None: neither).
    pub fn whole(&self, flag: &Flag) -> Result<Option<i64>> {
        self.given_or_default(flag)
            .map(|text| flag.whole(flag.key, text))
            .transpose()
    }

    /// `flag`'s duration in seconds: as given, else its default (None: neither).
    pub fn secs(&self, flag: &Flag) -> Result<Option<f64>> {
        self.given_or_default(flag)
            .map(|text| flag.duration(flag.key, text))
            .transpose()
    }

    fn given_or_default<'a>(&'a self, flag: &Flag) -> Option<&'a str> {
        self.get(flag.name()).or(flag.default)
    }
}

#[cfg(test)]
mod tests {
    use super::super::defs::{JSON, LIMIT, MAX_DEAD, MAX_LAG, OLDER_THAN, TYPE};
    use super::*;

    fn raw(values: &[(&'static str, &str)], switches: &[&'static str]) -> RawArgs {
        RawArgs {
            values: values.iter().map(|(k, v)| (*k, v.to_string())).collect(),
            switches: switches.to_vec(),
            ..RawArgs::default()
        }
    }

    #[test]
    fn options_are_read_by_their_definitions_with_the_tables_defaults() {
        let none = raw(&[], &[]);
        assert_eq!(none.whole(&LIMIT).unwrap(), Some(50));
        assert_eq!(none.whole(&MAX_DEAD).unwrap(), None);
        assert_eq!(none.secs(&MAX_LAG).unwrap(), None);
        assert_eq!(none.text(&TYPE), None);
        assert!(!none.switch(&JSON));
        let given = raw(
            &[("limit", "7"), ("max-lag", "90"), ("type", "order.*")],
            &["json"],
        );
        assert_eq!(given.whole(&LIMIT).unwrap(), Some(7));
        assert_eq!(given.secs(&MAX_LAG).unwrap(), Some(90.0));
        assert_eq!(given.text(&TYPE), Some("order.*"));
        assert!(given.switch(&JSON));
        let bad = raw(&[("limit", "0"), ("older-than", "7")], &[]);
        assert_eq!(
            bad.whole(&LIMIT).unwrap_err().to_string(),
            "--limit: 0 is out of range (at least 1)"
        );
        assert_eq!(
            bad.secs(&OLDER_THAN).unwrap_err().to_string(),
            "--older-than 7: give a unit, e.g. 7d or 7h"
        );
    }
}
