//! Publishing a typed event on the in-memory backend to 1 and to 10 no-op sync handlers,
//! beside calling the same functions directly, in the same run.
//!
//! `cargo bench -p events-core --bench publish` prints criterion's figures, then a summary
//! with ns per publish and the ratio to the direct calls.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use events_core::{EventBus, MemoryBackend, domain_event, handler};

#[domain_event(name = "bench.one")]
struct One {
    id: u64,
}

#[domain_event(name = "bench.ten")]
struct Ten {
    id: u64,
}

#[handler]
fn one_handler(event: &One) {
    black_box(event.id);
}

macro_rules! ten_handlers {
    ($($name:ident),*) => {
        $(
            #[handler]
            fn $name(event: &Ten) {
                black_box(event.id);
            }
        )*
        #[inline(never)]
        fn call_ten_directly(event: &Ten) {
            $( $name(black_box(event)); )*
        }
    };
}
ten_handlers!(h0, h1, h2, h3, h4, h5, h6, h7, h8, h9);

#[inline(never)]
fn call_one_directly(event: &One) {
    one_handler(black_box(event));
}

fn bus() -> EventBus {
    EventBus::builder(MemoryBackend::new())
        .warn_unhandled_events(false)
        .build()
        .expect("bench registry is valid")
}

fn bench(c: &mut Criterion) {
    let bus = bus();
    let mut group = c.benchmark_group("memory_publish");
    group.bench_function("direct_1", |b| {
        b.iter(|| call_one_directly(black_box(&One { id: 1 })))
    });
    group.bench_function("publish_blocking_1", |b| {
        b.iter(|| bus.publish_blocking(black_box(&One { id: 1 })).unwrap())
    });
    group.bench_function("direct_10", |b| {
        b.iter(|| call_ten_directly(black_box(&Ten { id: 1 })))
    });
    group.bench_function("publish_blocking_10", |b| {
        b.iter(|| bus.publish_blocking(black_box(&Ten { id: 1 })).unwrap())
    });
    group.finish();
}

/// ns per call of `f`, the best of several rounds.
fn ns_per_call<T>(mut f: impl FnMut() -> T) -> f64 {
    const CALLS: u32 = 2_000_000;
    (0..7)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..CALLS {
                black_box(f());
            }
            start.elapsed().as_nanos() as f64 / f64::from(CALLS)
        })
        .fold(f64::INFINITY, f64::min)
}

fn summary() {
    let bus = bus();
    println!("\nsummary (best of 7 rounds of 2,000,000 calls, same process):");
    println!(
        "{:<28} {:>10} {:>10} {:>8}",
        "case", "publish", "direct", "ratio"
    );
    let rows = [
        (
            "1 no-op sync handler",
            ns_per_call(|| bus.publish_blocking(black_box(&One { id: 1 })).unwrap()),
            ns_per_call(|| call_one_directly(black_box(&One { id: 1 }))),
        ),
        (
            "10 no-op sync handlers",
            ns_per_call(|| bus.publish_blocking(black_box(&Ten { id: 1 })).unwrap()),
            ns_per_call(|| call_ten_directly(black_box(&Ten { id: 1 }))),
        ),
    ];
    for (case, publish, direct) in rows {
        println!(
            "{case:<28} {publish:>8.1}ns {direct:>8.1}ns {:>7.1}x",
            publish / direct
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    summary();
}
