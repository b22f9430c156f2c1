//! The blocking publish path of the in-memory backend makes no heap allocation, counted by a
//! global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use events_core::{EventBus, MemoryBackend, domain_event, handler};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations are counted: only the measured code's, not those of
    /// the test harness's other threads.
    static COUNTING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn count() {
    if COUNTING.with(std::cell::Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
    }
}

// SAFETY: delegates to the system allocator, only counting calls.
#[allow(
    unsafe_code,
    reason = "a counting global allocator needs `unsafe impl GlobalAlloc`"
)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

static CALLS: AtomicUsize = AtomicUsize::new(0);

#[domain_event(name = "alloc.one")]
struct One {
    n: u64,
}

#[domain_event(name = "alloc.ten")]
struct Ten {
    n: u64,
}

#[domain_event(name = "alloc.none")]
struct Unhandled;

#[handler]
fn one(e: &One) {
    CALLS.fetch_add(e.n as usize, Ordering::Relaxed);
}

macro_rules! ten_handlers {
    ($($name:ident),*) => {$(
        #[handler]
        fn $name(e: &Ten) -> Result<(), std::io::Error> {
            CALLS.fetch_add(e.n as usize, Ordering::Relaxed);
            Ok(())
        }
    )*};
}
ten_handlers!(t0, t1, t2, t3, t4, t5, t6, t7, t8, t9);

fn allocations_during(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

#[test]
fn blocking_publish_does_not_allocate() {
    let bus = EventBus::new(MemoryBackend::new()).unwrap();
    // Warm up: first use of thread-locals in the backend's table may allocate once.
    bus.publish_blocking(&One { n: 0 }).unwrap();
    bus.publish_blocking(&Ten { n: 0 }).unwrap();
    bus.publish_blocking(&Unhandled).unwrap();

    let n = allocations_during(|| {
        for _ in 0..1_000 {
            bus.publish_blocking(&One { n: 1 }).unwrap();
            bus.publish_blocking(&Ten { n: 1 }).unwrap();
            bus.publish_blocking(&Unhandled).unwrap();
        }
    });
    assert_eq!(n, 0, "the blocking publish path allocated {n} times");
    assert_eq!(CALLS.load(Ordering::Relaxed), 1_000 * 11);

    // The counter works: the async path boxes its future.
    let n = allocations_during(|| {
        pollster::block_on(bus.publish(&One { n: 1 })).unwrap();
    });
    assert!(n > 0, "the allocation counter saw nothing");
}
