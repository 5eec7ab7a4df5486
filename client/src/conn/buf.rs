//! The read buffer of one connection, shared by the handshake and the reader
//! thread.
//!
//! Owns inbound bytes between the socket and frame decoding; knows nothing
//! about what a frame means. Bytes are read straight into the buffer's free
//! tail (no intermediate chunk), frames are taken by offset, and the unread
//! tail moves to the front only when the consumed head passes half of the
//! buffer (the broker's `Connection` does the same). After a spike (one large
//! reply) the buffer shrinks back to [`BUF_TARGET`] once it is empty.
//! Invariant: `pos <= end <= buf.len()`; `buf[pos..end]` are the unread bytes.

use std::io::{self, Read};

use procmesh_proto::frame::{self, FrameError};

/// Capacity the buffer returns to after a spike, and the least one read asks for.
pub(crate) const BUF_TARGET: usize = 64 * 1024;

/// Inbound bytes, consumed by offset.
#[derive(Debug, Default)]
pub(crate) struct ReadBuf {
    buf: Vec<u8>,
    pos: usize,
    end: usize,
}

impl ReadBuf {
    /// An empty buffer; memory is taken at the first read.
    pub fn new() -> ReadBuf {
        ReadBuf::default()
    }

    /// Bytes read and not yet consumed.
    #[cfg(test)]
    pub fn unread(&self) -> &[u8] {
        &self.buf[self.pos..self.end]
    }

    /// Takes the next complete frame's payload, or `Ok(None)` when more bytes
    /// are needed. The length is checked against `MAX_FRAME_LEN` before any
    /// memory is reserved for it.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        match frame::try_decode(&self.buf[self.pos..self.end], frame::MAX_FRAME_LEN)? {
            Some((a, b)) => {
                let start = self.pos;
                self.pos += b;
                Ok(Some(&self.buf[start + a..start + b]))
            }
            None => Ok(None),
        }
    }

    /// One read from `r` into the free tail (after making room: see the module
    /// doc). Returns what `read` returned: `Ok(0)` is the end of the stream.
    pub fn fill_from(&mut self, r: &mut impl Read) -> io::Result<usize> {
        self.make_room();
        let n = r.read(&mut self.buf[self.end..])?;
        self.end += n;
        Ok(n)
    }

    fn make_room(&mut self) {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
            if self.buf.len() > 4 * BUF_TARGET {
                self.buf = Vec::new();
            }
        } else if self.pos > self.buf.len() / 2 {
            self.buf.copy_within(self.pos..self.end, 0);
            self.end -= self.pos;
            self.pos = 0;
        }
        if self.end == self.buf.len() {
            // Zeroed once on growth, then reused: no per-read initialisation.
            let grow = self.buf.len().max(BUF_TARGET);
            self.buf.resize(self.buf.len() + grow, 0);
        }
    }

    /// The buffer's allocated length (for tests of the growth policy).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(payloads: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in payloads {
            frame::encode_into(p, &mut out);
        }
        out
    }

    /// A reader that hands out its bytes `step` at a time.
    struct Trickle<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn read_all(data: &[u8], step: usize) -> Vec<Vec<u8>> {
        let mut r = Trickle { data, step };
        let mut b = ReadBuf::new();
        let mut got = Vec::new();
        loop {
            while let Some(p) = b.next_frame().unwrap() {
                got.push(p.to_vec());
            }
            if b.fill_from(&mut r).unwrap() == 0 {
                break;
            }
        }
        assert!(b.unread().is_empty());
        got
    }

    #[test]
    fn frames_survive_any_split() {
        let big = vec![7u8; 3 * BUF_TARGET];
        let payloads: Vec<&[u8]> = vec![b"{}", b"", &big, b"[1,2,3]", b"x"];
        let data = framed(&payloads);
        for step in [1, 2, 3, 5, 4096, BUF_TARGET - 1, BUF_TARGET, usize::MAX] {
            assert_eq!(read_all(&data, step), payloads, "step {step}");
        }
    }

    #[test]
    fn oversized_prefix_is_an_error_before_allocation() {
        let mut b = ReadBuf::new();
        let mut r: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1];
        b.fill_from(&mut r).unwrap();
        assert!(b.next_frame().is_err());
        assert_eq!(b.capacity(), BUF_TARGET);
    }

    #[test]
    fn compacts_past_half_and_shrinks_after_a_spike() {
        let mut b = ReadBuf::new();
        // A spike: one frame larger than the target.
        let big = framed(&[&vec![1u8; 5 * BUF_TARGET]]);
        let mut r = Trickle {
            data: &big,
            step: usize::MAX,
        };
        while b.next_frame().unwrap().is_none() {
            b.fill_from(&mut r).unwrap();
        }
        assert!(b.capacity() > 4 * BUF_TARGET);
        // Once empty, the next read starts from a normal-sized buffer.
        let small = framed(&[b"ok"]);
        b.fill_from(&mut &small[..]).unwrap();
        assert_eq!(b.capacity(), BUF_TARGET);
        assert_eq!(b.next_frame().unwrap(), Some(&b"ok"[..]));

        // A partial frame left past half of the buffer moves to the front.
        let mut b = ReadBuf::new();
        let mut data = framed(&[&vec![2u8; BUF_TARGET / 2 + 10]]);
        data.extend_from_slice(&framed(&[b"tail"])[..5]);
        b.fill_from(&mut &data[..]).unwrap();
        assert!(b.next_frame().unwrap().is_some());
        assert_eq!(b.next_frame().unwrap(), None);
        let rest = &framed(&[b"tail"])[5..];
        b.fill_from(&mut &rest[..]).unwrap();
        assert_eq!(b.pos, 0);
        assert_eq!(b.capacity(), BUF_TARGET);
        assert_eq!(b.unread(), &framed(&[b"tail"])[..]);
        assert_eq!(b.next_frame().unwrap(), Some(&b"tail"[..]));
    }
}
