//! Length-prefixed framing (PROTOCOL.md §2).
//!
//! Owns the byte order and the size limit of the frame prefix; knows nothing about
//! what a payload contains. Invariant: a length is checked against the limit before
//! anyone reserves memory for it.
//!
//! ```text
//! +--------+--------+--------+--------+-------------------------+
//! | len >> 24 | len >> 16 | len >> 8 | len |  payload (len bytes) |
//! +--------+--------+--------+--------+-------------------------+
//!   4-byte unsigned big-endian payload length, then the payload
//! ```

/// Default maximum payload length: 64 MiB.
pub const MAX_FRAME_LEN: usize = 64 << 20;

/// Size of the length prefix in bytes.
pub const PREFIX_LEN: usize = 4;

/// Why a frame could not be taken from a buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FrameError {
    /// The prefix announces a payload longer than the limit.
    TooBig {
        /// Announced payload length.
        len: usize,
        /// Limit in force.
        max: usize,
    },
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::TooBig { len, max } => {
                write!(f, "frame of {len} bytes exceeds the limit of {max} bytes")
            }
        }
    }
}

impl std::error::Error for FrameError {}

/// Looks for one complete frame at the start of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed, `Ok(Some((start, end)))` with the
/// payload's range in `buf` (the frame occupies `0..end`), or an error when the
/// announced length exceeds `max`.
#[inline]
pub fn try_decode(buf: &[u8], max: usize) -> Result<Option<(usize, usize)>, FrameError> {
    if buf.len() < PREFIX_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > max {
        return Err(FrameError::TooBig { len, max });
    }
    let end = PREFIX_LEN + len;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some((PREFIX_LEN, end)))
}

/// Starts a frame in `out`: reserves the prefix and returns the position to pass to
/// [`finish`] once the payload has been appended.
#[inline]
pub fn begin(out: &mut Vec<u8>) -> usize {
    let at = out.len();
    out.extend_from_slice(&[0; PREFIX_LEN]);
    at
}

/// Completes a frame started with [`begin`] by writing its payload length.
#[inline]
pub fn finish(out: &mut [u8], at: usize) {
    let len = (out.len() - at - PREFIX_LEN) as u32;
    out[at..at + PREFIX_LEN].copy_from_slice(&len.to_be_bytes());
}

/// Appends one whole frame carrying `payload`.
pub fn encode_into(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_prefix_is_big_endian() {
        let mut out = Vec::new();
        let at = begin(&mut out);
        out.extend_from_slice(b"{}");
        finish(&mut out, at);
        assert_eq!(out, [0, 0, 0, 2, b'{', b'}']);
        let mut again = Vec::new();
        encode_into(b"{}", &mut again);
        assert_eq!(again, out);
    }

    #[test]
    fn incomplete_and_complete() {
        assert_eq!(try_decode(&[0, 0], 10), Ok(None));
        assert_eq!(try_decode(&[0, 0, 0, 3, 1, 2], 10), Ok(None));
        assert_eq!(try_decode(&[0, 0, 0, 2, 1, 2, 9], 10), Ok(Some((4, 6))));
    }

    #[test]
    fn oversize_is_rejected_before_payload_arrives() {
        assert_eq!(
            try_decode(&[0xff, 0xff, 0xff, 0xff], MAX_FRAME_LEN),
            Err(FrameError::TooBig {
                len: u32::MAX as usize,
                max: MAX_FRAME_LEN
            })
        );
    }
}
