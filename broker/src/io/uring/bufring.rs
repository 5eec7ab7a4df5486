//! The provided buffer ring every connection's multishot receive takes its buffers
//! from (kernel 5.19+): owned by the driver, handed to the kernel and back.

use std::io;

use io_uring::{types, IoUring};

use super::{BUF_GROUP, RING_BUFS, RING_BUF_SIZE};

/// A provided buffer ring (kernel 5.19+): entries in page-aligned memory shared with
/// the kernel, buffers in one allocation, the tail published with release ordering.
pub(super) struct BufRing {
    entries: *mut types::BufRingEntry,
    map_len: usize,
    bufs: Box<[u8]>,
    tail: u16,
}

impl BufRing {
    /// Maps the ring and registers it with `ring` as [`BUF_GROUP`], every buffer given.
    pub(super) fn register(ring: &IoUring) -> io::Result<BufRing> {
        let map_len = usize::from(RING_BUFS) * std::mem::size_of::<types::BufRingEntry>();
        // SAFETY: an anonymous private mapping; no existing memory is involved.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut b = BufRing {
            entries: p.cast(),
            map_len,
            bufs: vec![0; usize::from(RING_BUFS) * RING_BUF_SIZE].into_boxed_slice(),
            tail: 0,
        };
        // SAFETY: the mapping is page-aligned, holds RING_BUFS entries and lives as
        // long as `b`, which the driver drops only after the ring.
        unsafe {
            ring.submitter()
                .register_buf_ring_with_flags(p as u64, RING_BUFS, BUF_GROUP, 0)?
        };
        for bid in 0..RING_BUFS {
            b.give(bid);
        }
        Ok(b)
    }

    /// Hands buffer `bid` (back) to the kernel.
    pub(super) fn give(&mut self, bid: u16) {
        let i = usize::from(self.tail & (RING_BUFS - 1));
        let addr = self.bufs[usize::from(bid) * RING_BUF_SIZE..].as_ptr() as u64;
        // SAFETY: `i` < RING_BUFS entries of the mapping; the kernel reads an entry only
        // once the tail below covers it.
        unsafe {
            let e = &mut *self.entries.add(i);
            e.set_addr(addr);
            e.set_len(RING_BUF_SIZE as u32);
            e.set_bid(bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail field lives in the first entry of the mapping; the kernel
        // reads it with acquire ordering.
        unsafe {
            let tail =
                types::BufRingEntry::tail(self.entries) as *const std::sync::atomic::AtomicU16;
            (*tail).store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    pub(super) fn buf(&self, bid: u16, len: usize) -> &[u8] {
        let start = usize::from(bid) * RING_BUF_SIZE;
        &self.bufs[start..start + len.min(RING_BUF_SIZE)]
    }
}

// SAFETY: the mapping and buffers are owned by the ring's one driver, which moves to
// the loop's thread before anything is registered and touches them from there only.
unsafe impl Send for BufRing {}

impl Drop for BufRing {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; the ring that used it is gone (field
        // order of `Ring`) or never saw it.
        unsafe { libc::munmap(self.entries.cast(), self.map_len) };
    }
}
