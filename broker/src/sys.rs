//! What the OS says about this process: resident memory, CPU time and pinning.

use std::time::Duration;

/// Resident set size in bytes (0 when unavailable).
pub fn rss_bytes() -> u64 {
    // /proc/self/statm: size resident shared text lib data dt (in pages).
    let Ok(s) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf has no preconditions and only reads system configuration.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page.max(0) as u64
}

/// User plus system CPU time consumed by this process so far.
pub fn cpu_time() -> Duration {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full rusage into the pointer we pass; the struct is
    // zero-initialised and valid for writes.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return Duration::ZERO;
    }
    // SAFETY: getrusage returned 0, so it filled the struct.
    let ru = unsafe { ru.assume_init() };
    let tv =
        |t: libc::timeval| Duration::new(t.tv_sec.max(0) as u64, (t.tv_usec.max(0) as u32) * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The CPU this process is pinned to: `Some(cpu)` when its affinity mask holds exactly
/// one CPU (as `procmesh-launch` sets it), else `None`.
pub fn pinned_core() -> Option<usize> {
    let mut set = std::mem::MaybeUninit::<libc::cpu_set_t>::zeroed();
    // SAFETY: sched_getaffinity writes at most `size_of::<cpu_set_t>()` bytes into the
    // zero-initialised set we pass; pid 0 means the calling thread.
    let rc = unsafe {
        libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), set.as_mut_ptr())
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: the set was zero-initialised and sched_getaffinity succeeded.
    let set = unsafe { set.assume_init() };
    // SAFETY: CPU_COUNT only reads the set.
    if unsafe { libc::CPU_COUNT(&set) } != 1 {
        return None;
    }
    // SAFETY: CPU_ISSET only reads the set; every index is below CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize).find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_rss() {
        assert!(super::rss_bytes() > 0);
        let _ = super::cpu_time();
    }

    #[test]
    fn pinned_core_reads_a_one_cpu_mask() {
        // Pin this test's own thread (affinity is per thread) to the last CPU it may use.
        let size = std::mem::size_of::<libc::cpu_set_t>();
        // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls below only read and
        // write sets we own, for the calling thread (pid 0).
        unsafe {
            let mut all: libc::cpu_set_t = std::mem::zeroed();
            assert_eq!(libc::sched_getaffinity(0, size, &mut all), 0);
            let cpu = (0..libc::CPU_SETSIZE as usize)
                .rev()
                .find(|&c| libc::CPU_ISSET(c, &all))
                .expect("at least one CPU");
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            assert_eq!(libc::sched_setaffinity(0, size, &one), 0);
            assert_eq!(super::pinned_core(), Some(cpu));
            assert_eq!(libc::sched_setaffinity(0, size, &all), 0);
            if libc::CPU_COUNT(&all) > 1 {
                assert_eq!(super::pinned_core(), None);
            }
        }
    }
}
