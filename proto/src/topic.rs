//! Topic matching (PROTOCOL.md §8): a pattern ending in `*` matches by prefix,
//! anything else matches one channel exactly.

/// Whether a subscription is a wildcard pattern.
#[inline]
pub fn is_pattern(sub: &str) -> bool {
    sub.ends_with('*')
}

/// Whether `pattern` matches `channel`.
#[inline]
pub fn matches(pattern: &str, channel: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => channel.starts_with(prefix),
        None => pattern == channel,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_and_prefix() {
        assert!(matches("orders.*", "orders.created"));
        assert!(matches("orders.*", "orders."));
        assert!(!matches("orders.*", "orders"));
        assert!(matches("*", "anything"));
        assert!(matches("a", "a"));
        assert!(!matches("a", "ab"));
        assert!(is_pattern("x*") && !is_pattern("x"));
    }
}
