//! PAX extended-header records (`"<len> <key>=<value>\n"`) and PAX times.

/// Appends one PAX record to `out`. The length prefix counts itself.
pub fn push_record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let base = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = base + 1;
    while len != base + len.to_string().len() {
        len = base + len.to_string().len();
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

/// One PAX record: (key, value).
pub type Record<'a> = (&'a [u8], &'a [u8]);

/// Splits a PAX extended header into `(key, value)` records. Values are raw
/// bytes (xattr values may be binary and contain newlines).
pub fn parse_records(mut data: &[u8]) -> Result<Vec<Record<'_>>, String> {
    let mut records = Vec::new();
    while !data.is_empty() {
        // Some writers pad the header with NULs.
        if data.iter().all(|b| *b == 0) {
            break;
        }
        let space = data
            .iter()
            .position(|b| *b == b' ')
            .ok_or("PAX record without a length")?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or("PAX record with a bad length")?;
        if len <= space + 1 || len > data.len() {
            return Err("PAX record length out of range".into());
        }
        let record = &data[space + 1..len];
        let record = record
            .strip_suffix(b"\n")
            .ok_or("PAX record not ending in a newline")?;
        let eq = record
            .iter()
            .position(|b| *b == b'=')
            .ok_or("PAX record without '='")?;
        records.push((&record[..eq], &record[eq + 1..]));
        data = &data[len..];
    }
    Ok(records)
}

/// Formats a time as a PAX decimal (`secs[.frac]`, `frac` without trailing zeros).
pub fn format_time(secs: i64, nsec: u32) -> String {
    if nsec == 0 {
        return secs.to_string();
    }
    let (sign, whole, frac) = if secs < 0 {
        // secs + nsec/1e9 is negative: -( (-secs - 1) + (1e9 - nsec)/1e9 ).
        ("-", -(secs + 1), 1_000_000_000 - nsec)
    } else {
        ("", secs, nsec)
    };
    let frac = format!("{frac:09}");
    format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
}

/// Parses a PAX decimal time into (seconds, nanoseconds in `0..1e9`).
pub fn parse_time(value: &[u8]) -> Option<(i64, u32)> {
    let text = std::str::from_utf8(value).ok()?;
    let (negative, text) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (whole, frac) = match text.split_once('.') {
        Some((w, f)) => (w, f),
        None => (text, ""),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let whole: i64 = whole.parse().ok()?;
    let mut nsec: u32 = 0;
    for (i, digit) in frac.bytes().take(9).enumerate() {
        nsec += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
    }
    if !negative {
        Some((whole, nsec))
    } else if nsec == 0 {
        Some((whole.checked_neg()?, 0))
    } else {
        Some((whole.checked_neg()?.checked_sub(1)?, 1_000_000_000 - nsec))
    }
}

/// Parses a PAX decimal unsigned integer.
pub fn parse_u64(value: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(value).ok()?;
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_with_binary_values() {
        let mut out = Vec::new();
        push_record(&mut out, "path", b"a/b");
        let binary = [0u8, 1, b'\n', 0xff, b'=', b' '];
        push_record(&mut out, "SCHILY.xattr.security.capability", &binary);
        let long = vec![b'x'; 995];
        push_record(&mut out, "linkpath", &long);
        assert!(out.starts_with(b"12 path=a/b\n"));
        let recs = parse_records(&out).unwrap();
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[0], (&b"path"[..], &b"a/b"[..]));
        assert_eq!(recs[1].1, &binary[..]);
        assert_eq!(recs[2].1, &long[..]);
        // The length prefix is exact at digit-count boundaries.
        for n in 0..2000 {
            let mut one = Vec::new();
            push_record(&mut one, "k", &vec![b'v'; n]);
            let prefix: usize =
                std::str::from_utf8(&one[..one.iter().position(|b| *b == b' ').unwrap()])
                    .unwrap()
                    .parse()
                    .unwrap();
            assert_eq!(prefix, one.len());
        }
    }

    #[test]
    fn malformed_records_are_rejected() {
        for bad in [
            &b"5 a=b"[..],
            b"x a=b\n",
            b"99 a=b\n",
            b"6 ab\n\n",
            b"nolen",
        ] {
            assert!(parse_records(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn times_round_trip() {
        for (s, n) in [
            (0, 0),
            (1, 500_000_000),
            (-2, 500_000_000),
            (-1, 0),
            (1_700_000_000, 123),
            (-5, 1),
        ] {
            let text = format_time(s, n);
            assert_eq!(parse_time(text.as_bytes()), Some((s, n)), "{text}");
        }
        assert_eq!(format_time(-2, 500_000_000), "-1.5");
        assert_eq!(parse_time(b"12.3456789999"), Some((12, 345_678_999)));
        assert_eq!(parse_time(b"1e5"), None);
    }
}
