//! The codec, per message: a typed event encoded to a Redis envelope and to AMQP parts, and
//! each decoded back to the typed event. The bar is 2 µs per message each way.
//!
//! `cargo bench -p events-celery --bench codec` prints criterion's figures, then a summary in
//! ns per message.

use std::hint::black_box;
use std::time::Instant;

use criterion::{Criterion, criterion_group};
use events_celery::codec::{AmqpMessage, DecodeOptions, EncodeOptions, TaskMessage};

#[events_core::domain_event(name = "products.product_created")]
#[derive(Debug, Clone, PartialEq)]
struct ProductCreated {
    product_id: String,
    name: String,
    stock: u32,
}

fn event() -> ProductCreated {
    ProductCreated {
        product_id: "abc-123".into(),
        name: "Brake pad".into(),
        stock: 4,
    }
}

fn encode_redis(event: &ProductCreated, options: &EncodeOptions) -> String {
    TaskMessage::from_event(event, options)
        .and_then(|message| message.to_redis())
        .map(|redis| redis.envelope)
        .unwrap_or_default()
}

fn encode_amqp(event: &ProductCreated, options: &EncodeOptions) -> AmqpMessage {
    TaskMessage::from_event(event, options)
        .and_then(TaskMessage::into_amqp)
        .unwrap_or_default()
}

fn decode_redis(envelope: &str, options: &DecodeOptions) -> Option<ProductCreated> {
    TaskMessage::decode_redis(envelope.as_bytes(), options)
        .ok()?
        .payload()
        .ok()
}

fn decode_amqp(message: &AmqpMessage, options: &DecodeOptions) -> Option<ProductCreated> {
    TaskMessage::decode_amqp(message, options)
        .ok()?
        .payload()
        .ok()
}

fn codec(c: &mut Criterion) {
    let event = event();
    let encode = EncodeOptions::new().queue("default");
    // As the worker decodes: it holds the envelope's bytes, so no copy in `raw_envelope`.
    let decode = DecodeOptions::new().keep_raw_envelope(false);
    let envelope = encode_redis(&event, &encode);
    let amqp = encode_amqp(&event, &encode);
    assert_eq!(decode_redis(&envelope, &decode), Some(event.clone()));
    assert_eq!(decode_amqp(&amqp, &decode), Some(event.clone()));

    let mut group = c.benchmark_group("codec");
    group.bench_function("encode_redis", |b| {
        b.iter(|| encode_redis(black_box(&event), &encode))
    });
    group.bench_function("encode_amqp", |b| {
        b.iter(|| encode_amqp(black_box(&event), &encode))
    });
    group.bench_function("decode_redis", |b| {
        b.iter(|| decode_redis(black_box(&envelope), &decode))
    });
    group.bench_function("decode_amqp", |b| {
        b.iter(|| decode_amqp(black_box(&amqp), &decode))
    });
    group.finish();
}

/// ns per call of `f`: (median, fastest) over 40 batches of 10,000 calls. The machine's two
/// cores are shared, so the median and the fastest batch say more than a mean.
fn ns_per_call<T>(mut f: impl FnMut() -> T) -> (f64, f64) {
    const CALLS: u32 = 10_000;
    for _ in 0..CALLS {
        black_box(f());
    }
    let mut batches: Vec<f64> = (0..40)
        .map(|_| {
            let start = Instant::now();
            for _ in 0..CALLS {
                black_box(f());
            }
            start.elapsed().as_nanos() as f64 / f64::from(CALLS)
        })
        .collect();
    batches.sort_by(f64::total_cmp);
    (batches[batches.len() / 2], batches[0])
}

fn summary() {
    let event = event();
    let encode = EncodeOptions::new().queue("default");
    // As the worker decodes: it holds the envelope's bytes, so no copy in `raw_envelope`.
    let decode = DecodeOptions::new().keep_raw_envelope(false);
    let envelope = encode_redis(&event, &encode);
    let amqp = encode_amqp(&event, &encode);
    println!("\nper message (bar: 2000 ns each way): median batch, fastest batch");
    let figures = [
        (
            "encode event -> redis envelope",
            ns_per_call(|| encode_redis(black_box(&event), &encode)),
        ),
        (
            "encode event -> amqp parts",
            ns_per_call(|| encode_amqp(black_box(&event), &encode)),
        ),
        (
            "decode redis envelope -> event",
            ns_per_call(|| decode_redis(black_box(&envelope), &decode)),
        ),
        (
            "decode amqp parts -> event",
            ns_per_call(|| decode_amqp(black_box(&amqp), &decode)),
        ),
    ];
    for (what, (median, fastest)) in &figures {
        println!("  {what:<32} {median:>6.0} ns {fastest:>6.0} ns");
    }

    // The same event through plain serde_json, measured the same way in this process: what
    // the Celery envelope costs on top of serialising the event itself.
    let json = serde_json::to_vec(&event).unwrap_or_default();
    let baseline_encode = ns_per_call(|| serde_json::to_string(black_box(&event)));
    let baseline_decode =
        ns_per_call(|| serde_json::from_slice::<ProductCreated>(black_box(&json)).ok());
    println!("\nbaseline, plain serde_json of the event (median batch, fastest batch)");
    println!(
        "  {:<32} {:>6.0} ns {:>6.0} ns",
        "serde_json::to_string", baseline_encode.0, baseline_encode.1
    );
    println!(
        "  {:<32} {:>6.0} ns {:>6.0} ns",
        "serde_json::from_slice", baseline_decode.0, baseline_decode.1
    );
    println!("ratio to the baseline (median batch)");
    for (index, (what, (median, _))) in figures.iter().enumerate() {
        let (name, baseline) = if index < 2 {
            ("to_string", baseline_encode.0)
        } else {
            ("from_slice", baseline_decode.0)
        };
        println!(
            "  {what:<32} {:>6.1}x serde_json::{name}",
            median / baseline
        );
    }
}

criterion_group!(benches, codec);

fn main() {
    benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
    summary();
}
