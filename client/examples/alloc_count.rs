//! Heap allocations per request on the client side: the calling thread and the
//! connection's reader thread together (everything in this process), so a
//! change to the request path can show it adds none.
//!
//! ```text
//! procmesh serve --socket /tmp/pm.sock --heartbeat 0 &
//! PROCMESH_SOCKET=/tmp/pm.sock cargo run -p procmesh --example alloc_count
//! ```
//!
//! The broker runs in its own process, so its allocations are not counted.
//! Counts include the caller's own work (serde encoding of the value, decoding
//! the reply into a `Vec`); times are for orientation only (use a release
//! build for timing).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Counts every allocation and reallocation, then defers to the system allocator.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counters are atomics and never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size() as u64, Ordering::Relaxed);
        // SAFETY: forwarded as received (see above).
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded as received (see above).
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(n as u64, Ordering::Relaxed);
        // SAFETY: forwarded as received (see above).
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// Requests per measurement.
const N: u64 = 20_000;

fn measure(name: &str, f: &dyn Fn()) {
    let (a0, b0) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    let t = Instant::now();
    for _ in 0..N {
        f();
    }
    let el = t.elapsed();
    let (a1, b1) = (
        ALLOCS.load(Ordering::Relaxed),
        BYTES.load(Ordering::Relaxed),
    );
    println!(
        "{name:<10} {:>6.2} allocs/req {:>6.0} bytes/req {:>7.1} us/req",
        (a1 - a0) as f64 / N as f64,
        (b1 - b0) as f64 / N as f64,
        el.as_secs_f64() * 1e6 / N as f64
    );
}

fn main() -> Result<(), procmesh::ClientError> {
    let c = procmesh::Client::builder()
        .auto_spawn(false)
        .ping_interval(None)
        .connect()?;
    let v = vec![7u8; 100];
    // Warm up: the read and write buffers and the pending table reach their size.
    for _ in 0..1000 {
        c.set("k1", &v)?;
        let _: Option<Vec<u8>> = c.get("k1")?;
    }
    measure("set 100B", &|| c.set("k1", &v).unwrap());
    measure("get 100B", &|| {
        let _: Option<Vec<u8>> = c.get("k1").unwrap();
    });
    measure("del miss", &|| {
        c.del("nope").unwrap();
    });
    measure("incr", &|| {
        c.incr("ctr", 1).unwrap();
    });
    Ok(())
}
