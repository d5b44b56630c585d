//! One claimed event as a handler sees it, and its JSON line: the form `stdout` prints, `exec:`
//! pipes and `pipe:` writes, built straight into a buffer (no `format!`, no intermediate
//! strings), always exactly one line.

/// One claimed event, as a handler sees it.
#[derive(Clone, Debug)]
pub struct Event {
    pub id: i64,
    pub event_type: Option<String>,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    /// The payload as JSON text (`null` when the column is NULL). Parse it with
    /// [`Event::payload_json`] if the handler needs a value; targets that forward it don't.
    pub payload: String,
    /// 1 on the first delivery attempt, 2 on the first retry, ...
    pub attempt: i32,
}

impl Event {
    pub fn payload_json(&self) -> serde_json::Result<serde_json::Value> {
        serde_json::from_str(&self.payload)
    }

    /// The event as one JSON object (no trailing newline): id, event_type, aggregate_type,
    /// aggregate_id, attempt, payload. This is what `stdout` prints and `exec` pipes.
    pub fn to_json_line(&self) -> String {
        let mut out = Vec::with_capacity(96 + self.payload.len());
        self.write_json_line(&mut out);
        // Only JSON text and ASCII went in.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Appends [`Event::to_json_line`] to `out`, without allocating beyond `out`. Always one
    /// line: a `json` (not `jsonb`) payload column keeps the text as written, which may be
    /// pretty-printed; in valid JSON a raw line break can only be white space between tokens
    /// (inside strings it is escaped), so a space replaces it.
    pub fn write_json_line(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"id\":");
        push_int(out, self.id);
        out.extend_from_slice(b",\"event_type\":");
        push_str(out, self.event_type.as_deref());
        out.extend_from_slice(b",\"aggregate_type\":");
        push_str(out, self.aggregate_type.as_deref());
        out.extend_from_slice(b",\"aggregate_id\":");
        push_str(out, self.aggregate_id.as_deref());
        out.extend_from_slice(b",\"attempt\":");
        push_int(out, i64::from(self.attempt));
        out.extend_from_slice(b",\"payload\":");
        let start = out.len();
        out.extend_from_slice(self.payload.as_bytes());
        for b in &mut out[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
        out.push(b'}');
    }
}

/// A JSON string (escaped by serde_json), or `null`.
fn push_str(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        // Writing into a Vec cannot fail, and a &str always serialises.
        Some(v) => {
            let _ = serde_json::to_writer(&mut *out, v);
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// An integer in decimal, without `fmt`.
fn push_int(out: &mut Vec<u8>, v: i64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = v.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        out.push(b'-');
    }
    out.extend_from_slice(&digits[i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_json_line_is_exact_json_on_one_line() {
        let cases = [
            (0, None, None, None, "null", 1),
            (
                i64::MAX,
                Some("a\"b\\c\n\u{1}é"),
                Some(""),
                Some("\u{2028}x"),
                "{\"k\": [1, 2]}",
                7,
            ),
            (
                i64::MIN,
                Some("t"),
                None,
                Some("9"),
                "{\n  \"a\": \"x\\ny\"\r\n}",
                i32::MAX,
            ),
            (-5, None, Some("o"), None, "\"s\"", -1),
        ];
        for (id, et, at, ai, payload, attempt) in cases {
            let e = Event {
                id,
                event_type: et.map(str::to_string),
                aggregate_type: at.map(str::to_string),
                aggregate_id: ai.map(str::to_string),
                payload: payload.into(),
                attempt,
            };
            let line = e.to_json_line();
            assert!(!line.contains(['\n', '\r']), "{line}");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let want = serde_json::json!({
                "id": id, "event_type": et, "aggregate_type": at, "aggregate_id": ai,
                "attempt": attempt,
                "payload": serde_json::from_str::<serde_json::Value>(payload).unwrap(),
            });
            assert_eq!(v, want);
            let keys: Vec<&str> = line
                .split("\":")
                .take(6)
                .map(|k| k.rsplit('"').next().unwrap())
                .collect();
            assert_eq!(
                keys,
                [
                    "id",
                    "event_type",
                    "aggregate_type",
                    "aggregate_id",
                    "attempt",
                    "payload"
                ]
            );
        }
    }
}
