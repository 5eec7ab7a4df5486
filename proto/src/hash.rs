//! FNV-1a shard routing, computed exactly as the Node.js package does.
//!
//! JavaScript hashes `str.charCodeAt(i)` — UTF-16 code units — so we do the same;
//! over UTF-8 bytes, non-ASCII keys would land on different shards than Node's.

const OFFSET: u32 = 0x811c_9dc5;
const PRIME: u32 = 0x0100_0193;

/// FNV-1a 32-bit over the UTF-16 code units of `s`.
#[inline]
pub fn fnv1a(s: &str) -> u32 {
    let mut h = OFFSET;
    if s.is_ascii() {
        for &b in s.as_bytes() {
            h ^= b as u32;
            h = h.wrapping_mul(PRIME);
        }
    } else {
        for u in s.encode_utf16() {
            h ^= u as u32;
            h = h.wrapping_mul(PRIME);
        }
    }
    h
}

/// The shard owning `key` among `n` shards (0 when `n <= 1`).
#[inline]
pub fn shard_index(key: &str, n: usize) -> usize {
    if n <= 1 {
        0
    } else {
        (fnv1a(key) as usize) % n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_values() {
        // Published FNV-1a 32-bit test vectors (ASCII, where UTF-16 = bytes).
        assert_eq!(fnv1a(""), 0x811c9dc5);
        assert_eq!(fnv1a("a"), 0xe40c292c);
        assert_eq!(fnv1a("foobar"), 0xbf9cf968);
        // Non-ASCII: computed over UTF-16 code units, as JavaScript's charCodeAt does.
        // "é" is the one unit 0x00e9; "😀" is the surrogate pair d83d de00.
        let by_hand = |units: &[u32]| {
            units
                .iter()
                .fold(OFFSET, |h, &u| (h ^ u).wrapping_mul(PRIME))
        };
        assert_eq!(fnv1a("é"), by_hand(&[0xe9]));
        // Reference values computed with the Node.js package's algorithm
        // (`h ^= s.charCodeAt(i); h = Math.imul(h, 0x01000193)`).
        assert_eq!(fnv1a("user:42"), 0x2f6b7b82);
        assert_eq!(fnv1a("é"), 0x6c0b6c44);
        assert_eq!(fnv1a("日本語"), 0x5406374e);
        assert_eq!(fnv1a("a😀"), 0x1c8ecbf9);
        assert_eq!(fnv1a("café"), 0x3308be7c);
        assert_eq!(fnv1a("a😀"), by_hand(&[0x61, 0xd83d, 0xde00]));
        assert_ne!(fnv1a("é"), {
            // The UTF-8 byte hash differs, which is why we do not use it.
            "é".bytes()
                .fold(OFFSET, |h, b| (h ^ b as u32).wrapping_mul(PRIME))
        });
    }

    #[test]
    fn shard_of_single_shard_is_zero() {
        assert_eq!(shard_index("anything", 1), 0);
        assert_eq!(shard_index("a", 3), (0xe40c292c_u32 % 3) as usize);
    }
}
