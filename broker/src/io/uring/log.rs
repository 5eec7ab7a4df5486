//! The persistence log's writes through the driver's ring ([`RingLog`], the log's
//! [`LogSubmit`] while the loop runs).

use std::io;
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

use super::{TAG_LOG_SYNC, TAG_LOG_WRITE};
use crate::persistence::aof::LogSubmit;

thread_local! {
    /// Completions the log submitter ([`RingLog`]) reaped while it waited for its
    /// own, on this loop thread: handled first in the next turn, which then needs
    /// no enter of its own (the commit's enter submitted what was queued).
    pub(super) static STASH: std::cell::RefCell<Vec<(u64, i32, u32)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// The log's [`LogSubmit`] on the driver's ring, installed for the time the loop
/// runs: the write (and, when a sync is due, an fsync linked after it) is queued
/// behind whatever the turn already queued and submitted in one enter that waits
/// for the log's completions; any other completion reaped meanwhile goes to
/// [`STASH`] for the next turn.
pub(super) struct RingLog {
    pub(super) ring: *const IoUring,
}

impl RingLog {
    fn push(ring: &IoUring, sqe: &io_uring::squeue::Entry) {
        loop {
            // SAFETY: the loop's thread is the ring's only user and the driver holds
            // no reference to its queues while the core commits; `buf` (in the
            // entry) outlives the operation: `append` returns only after the
            // completion.
            if unsafe { ring.submission_shared().push(sqe) }.is_ok() {
                return;
            }
            let _ = ring.submit();
        }
    }

    /// Finishes a short write synchronously (rare: a full disk mid-write).
    fn write_rest(fd: RawFd, mut rest: &[u8]) -> io::Result<()> {
        while !rest.is_empty() {
            // SAFETY: writes from a live buffer to the log's descriptor.
            let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                return Err(io::ErrorKind::WriteZero.into());
            }
            rest = &rest[n as usize..];
        }
        Ok(())
    }
}

impl LogSubmit for RingLog {
    fn append(
        &mut self,
        fd: RawFd,
        buf: &[u8],
        sync: bool,
    ) -> (io::Result<()>, Option<io::Result<()>>) {
        // SAFETY: set up in `run` from the reactor's own ring, which lives (unmoved)
        // until `run` removes this submitter; used only on the loop's thread, from
        // inside `core.end_turn`/`shutdown`, when the driver does not borrow it.
        let ring = unsafe { &*self.ring };
        // The file is opened with O_APPEND: offset -1 (the file position) appends.
        let write = opcode::Write::new(types::Fd(fd), buf.as_ptr(), buf.len() as u32)
            .offset(u64::MAX)
            .build()
            .user_data(TAG_LOG_WRITE);
        if sync {
            Self::push(ring, &write.flags(io_uring::squeue::Flags::IO_LINK));
            let fsync = opcode::Fsync::new(types::Fd(fd))
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(TAG_LOG_SYNC);
            Self::push(ring, &fsync);
        } else {
            Self::push(ring, &write);
        }
        let (mut wrote, mut synced) = (None, if sync { None } else { Some(0) });
        while wrote.is_none() || synced.is_none() {
            let want = usize::from(wrote.is_none()) + usize::from(synced.is_none());
            if let Err(e) = ring.submit_and_wait(want) {
                if !matches!(
                    e.raw_os_error(),
                    Some(libc::EINTR | libc::EBUSY | libc::EAGAIN | libc::ETIME)
                ) {
                    // The entries stay queued and would outlive `buf`: only a broken
                    // ring fails here, and the broker cannot go on without it.
                    panic!("invariant: io_uring_enter for the log failed: {e}");
                }
            }
            // SAFETY: as above, the driver holds no reference to the completion queue.
            for c in unsafe { ring.completion_shared() } {
                match c.user_data() {
                    TAG_LOG_WRITE => wrote = Some(c.result()),
                    TAG_LOG_SYNC => synced = Some(c.result()),
                    _ => {
                        STASH.with(|s| s.borrow_mut().push((c.user_data(), c.result(), c.flags())))
                    }
                }
            }
        }
        let (wrote, synced) = (wrote.unwrap_or(0), synced.unwrap_or(0));
        let w = match usize::try_from(wrote) {
            Err(_) => return (Err(io::Error::from_raw_os_error(-wrote)), None),
            Ok(n) if n < buf.len() => Self::write_rest(fd, &buf[n..]),
            Ok(_) => Ok(()),
        };
        if w.is_err() || !sync {
            return (w, None);
        }
        let s = match synced {
            0 => Ok(()),
            // Cancelled after a short write: the rest was written above, sync now.
            e if -e == libc::ECANCELED => {
                // SAFETY: fdatasync on the log's descriptor; no memory is involved.
                if unsafe { libc::fdatasync(fd) } == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            }
            e => Err(io::Error::from_raw_os_error(-e)),
        };
        (w, Some(s))
    }
}
