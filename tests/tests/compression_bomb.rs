//! Compression bombs are refused within the size limit: for every kombu compression method, a
//! body of a few KiB that decompresses to 64 MiB (1 GiB with `FAULT_SCALE=full`) of zeros is
//! refused with "over the limit" while decompressing, and the peak heap the decode took, counted
//! by a global allocator, stays under the limit plus the decoder's own bounded window — never
//! near the bomb's size.
//!
//! The bombs are made by Python's compressors (`examples/python/make_bombs.py`, with the
//! interpreter of `EVENTS_TEST_PYTHON`).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

use events_celery::codec::{AmqpMessage, AmqpProperties, AmqpTable, AmqpValue};
use events_celery::{Compression, DecodeError, DecodeOptions, TaskMessage};
use tests::fault::sized;
use tests::{python, workspace_dir};

struct PeakCounting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// Whether this thread's allocations are counted (only the measured decode's).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn grew(bytes: usize) {
    if COUNTING.with(Cell::get) {
        let now = CURRENT.fetch_add(bytes, Ordering::SeqCst) + bytes;
        PEAK.fetch_max(now, Ordering::SeqCst);
    }
}

fn shrank(bytes: usize) {
    if COUNTING.with(Cell::get) {
        CURRENT.fetch_sub(bytes, Ordering::SeqCst);
    }
}

// SAFETY: delegates to the system allocator, only counting sizes.
#[allow(
    unsafe_code,
    reason = "a counting global allocator needs `unsafe impl GlobalAlloc`"
)]
unsafe impl GlobalAlloc for PeakCounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        shrank(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size);
        shrank(layout.size());
        // SAFETY: the caller upholds `GlobalAlloc::realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: PeakCounting = PeakCounting;

/// The decode's size limit: the default, 16 MiB.
const LIMIT: usize = 16 << 20;

/// What a decoder may hold besides the output: its window (brotli 4 MiB at lgwin 22, zstd's
/// window, xz's dictionary grown with the output) and buffers. Measured peaks are in the
/// report line each run prints.
const DECODER_ALLOWANCE: usize = 6 << 20;

fn bomb_message(method: Compression, body: Vec<u8>) -> AmqpMessage {
    let text = |s: &str| AmqpValue::LongString(s.as_bytes().to_vec());
    AmqpMessage {
        exchange: String::new(),
        routing_key: "bombs".into(),
        properties: AmqpProperties {
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            ..AmqpProperties::default()
        },
        headers: AmqpTable(vec![
            ("task".into(), text("domain_events.fault.probe")),
            ("id".into(), text("bomb")),
            ("compression".into(), text(method.content_type())),
        ]),
        body,
    }
}

#[test]
fn compression_bombs_are_refused_within_the_size_limit() {
    let mib: usize = sized(64, 1024);
    let dir = std::env::temp_dir().join(format!("events-bombs-{}-{mib}", std::process::id()));
    let mut command = std::process::Command::new(python());
    command
        .arg(workspace_dir().join("examples/python/make_bombs.py"))
        .args(["--dir", dir.to_str().unwrap(), "--mib", &mib.to_string()]);
    let output = tests::output_within(command, tests::PYTHON_LIMIT);
    assert!(
        output.status.success(),
        "make_bombs.py failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let options = DecodeOptions::new().max_message_bytes(LIMIT);
    for method in Compression::ALL {
        let name = method.aliases()[0];
        let body = std::fs::read(dir.join(name)).unwrap();
        let compressed = body.len();
        let message = bomb_message(method, body);

        PEAK.store(0, Ordering::SeqCst);
        CURRENT.store(0, Ordering::SeqCst);
        COUNTING.with(|c| c.set(true));
        let result = TaskMessage::decode_amqp(&message, &options);
        COUNTING.with(|c| c.set(false));
        let peak = PEAK.load(Ordering::SeqCst);

        match result {
            Err(DecodeError::DecompressedTooLarge { compression, limit }) => {
                assert_eq!(compression, method.content_type());
                assert_eq!(limit, LIMIT);
            }
            Err(other) => panic!("{method}: {other}"),
            Ok(_) => panic!("{method}: a {mib} MiB bomb was decoded"),
        }
        eprintln!(
            "{name}: {compressed} bytes expanding to {mib} MiB: refused at the {} MiB limit, \
             peak heap {:.1} MiB",
            LIMIT >> 20,
            peak as f64 / (1 << 20) as f64
        );
        assert!(
            peak <= LIMIT + DECODER_ALLOWANCE,
            "{method}: decoding took {peak} bytes at peak, over the {LIMIT}-byte limit plus \
             {DECODER_ALLOWANCE} for the decoder"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
