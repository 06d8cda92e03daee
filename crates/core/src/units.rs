//! Sizes as people write them and as reports print them.

/// A memory size: a number with an optional K/M/G/T suffix (powers of 1024, as cgroups read
/// them; "MB", "MiB" and "M" are all MiB), a bare number is bytes.
pub fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = (t[..split].trim(), t[split..].trim().to_ascii_lowercase());
    let shift = match unit.trim_end_matches("ib").trim_end_matches('b') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    let value: f64 = number.parse().ok()?;
    (value.is_finite() && value > 0.0).then(|| (value * (1u64 << shift) as f64) as u64)
}

/// Bytes as MiB with one decimal, for reports.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}
