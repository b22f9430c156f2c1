//! Values nested deeper than a worker reads, built in code: every publish path of the codec
//! refuses them with an error instead of overflowing the stack (each test runs on a thread
//! with the default 2 MiB stack), and a value at the limit still makes the round trip.

use events_core::MAX_PAYLOAD_DEPTH;
use serde::Serialize;
use serde_json::Value;

use super::*;

/// Far beyond any limit: each level costs a recursive walker a stack frame.
const DEEP: usize = 100_000;

/// Runs `f` on a new thread with the default 2 MiB stack (the harness's own threads may be
/// given more through `RUST_MIN_STACK`).
fn on_default_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

/// `[[...[1]...]]`, `depth` arrays deep, built without recursion.
fn nested_value(depth: usize) -> Value {
    let mut value = Value::from(1);
    for _ in 0..depth {
        value = Value::Array(vec![value]);
    }
    value
}

/// A recursive type: one object (`{"Node": ...}`) per level.
#[derive(Serialize)]
enum Tree {
    Leaf,
    Node(Box<Tree>),
}

/// A recursive type whose levels write no bracket at all (`Some` inside a newtype): a depth
/// count kept by a JSON writer would never see them.
#[derive(Serialize)]
struct Chain(Option<Box<Chain>>);

fn tree(depth: usize) -> Tree {
    (0..depth).fold(Tree::Leaf, |tree, _| Tree::Node(Box::new(tree)))
}

fn chain(depth: usize) -> Chain {
    (0..depth).fold(Chain(None), |chain, _| Chain(Some(Box::new(chain))))
}

/// Drops a deep tree without recursion (its derived drop recurses once per level).
fn dismantle_tree(mut tree: Tree) {
    while let Tree::Node(next) = tree {
        tree = *next;
    }
}

fn dismantle_chain(mut chain: Chain) {
    while let Chain(Some(next)) = chain {
        chain = *next;
    }
}

fn payload_message(payload: Json) -> Result<TaskMessage, EncodeError> {
    TaskMessage::from_payload("depth.probe", payload, &EncodeOptions::new())
}

#[test]
fn recursive_types_nested_too_deep_are_refused_when_serialised() {
    on_default_stack(|| {
        let deep = tree(DEEP);
        let error = Json::from_serialize(&deep).unwrap_err().to_string();
        dismantle_tree(deep);
        assert!(
            error.contains("nests deeper than 126 arrays and objects"),
            "{error}"
        );

        // No brackets, so only the count of serde's levels stops it.
        let deep = chain(DEEP);
        let error = Json::from_serialize(&deep).unwrap_err().to_string();
        dismantle_chain(deep);
        assert!(error.contains("nests deeper than 504 levels"), "{error}");

        // At the limit it is written, and a worker reads it back inside a message body.
        let json = Json::from_serialize(&tree(MAX_PAYLOAD_DEPTH)).unwrap();
        let message = payload_message(json.clone()).unwrap();
        let redis = message.to_redis().unwrap();
        let decoded =
            TaskMessage::decode_redis(redis.envelope.as_bytes(), &DecodeOptions::default())
                .unwrap();
        assert_eq!(decoded.kwargs["payload"], json);
        let error = Json::from_serialize(&tree(MAX_PAYLOAD_DEPTH + 1)).unwrap_err();
        assert!(error.to_string().contains("nests deeper than"), "{error}");
    });
}

#[test]
fn payloads_nested_too_deep_are_refused_by_from_payload() {
    on_default_stack(|| {
        // A serde_json::Value built in code, converted (and dropped) without recursion.
        let error = payload_message(nested_value(DEEP).into()).unwrap_err();
        assert!(
            matches!(
                error,
                EncodeError::TooDeep {
                    limit: MAX_PAYLOAD_DEPTH,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().contains("`depth.probe`"), "{error}");

        let at_limit = Json::from(nested_value(MAX_PAYLOAD_DEPTH));
        let message = payload_message(at_limit.clone()).unwrap();
        let envelope = message.to_redis().unwrap().envelope;
        let decoded =
            TaskMessage::decode_redis(envelope.as_bytes(), &DecodeOptions::default()).unwrap();
        assert_eq!(decoded.kwargs["payload"], at_limit);
        let amqp = message.to_amqp().unwrap();
        let decoded = TaskMessage::decode_amqp(&amqp, &DecodeOptions::default()).unwrap();
        assert_eq!(decoded.kwargs["payload"], at_limit);
        assert!(matches!(
            payload_message(nested_value(MAX_PAYLOAD_DEPTH + 1).into()),
            Err(EncodeError::TooDeep { .. })
        ));
    });
}

#[test]
fn headers_nested_too_deep_are_refused() {
    on_default_stack(|| {
        let options = EncodeOptions::new().header("x-tree", nested_value(DEEP));
        let error = TaskMessage::from_payload("depth.probe", Json::Null, &options).unwrap_err();
        assert!(error.to_string().contains("header `x-tree`"), "{error}");

        // Deeper than the AMQP guard reads (64 tables and arrays, the headers table
        // included), but within what a Redis envelope carries.
        let options = EncodeOptions::new().header("x-tree", nested_value(64));
        let message = TaskMessage::from_payload("depth.probe", Json::Null, &options).unwrap();
        let error = message.to_amqp().unwrap_err();
        assert!(
            matches!(&error, EncodeError::TooDeep { part, limit: 64 } if part == "header `x-tree`"),
            "{error:?}"
        );
        message.to_redis().unwrap();
        let options = EncodeOptions::new().header("x-tree", nested_value(63));
        let message = TaskMessage::from_payload("depth.probe", Json::Null, &options).unwrap();
        let decoded =
            TaskMessage::decode_amqp(&message.to_amqp().unwrap(), &DecodeOptions::default())
                .unwrap();
        let custom = decoded
            .headers
            .custom
            .iter()
            .find(|(name, _)| name == "x-tree");
        assert_eq!(
            custom.map(|(_, value)| value),
            Some(&Json::from(nested_value(63)))
        );
    });
}

#[test]
fn messages_built_by_hand_too_deep_are_refused_by_the_writers() {
    on_default_stack(|| {
        let mut message = payload_message(Json::Null).unwrap();
        let deep = Json::from(nested_value(DEEP));
        assert!(deep.nests_deeper_than(MAX_PAYLOAD_DEPTH));
        for place in 0..3 {
            match place {
                0 => message.kwargs["payload"] = Json::from(nested_value(DEEP)),
                1 => message.args = vec![Json::from(nested_value(DEEP))],
                _ => message.embed.chain = Json::from(nested_value(DEEP)),
            }
            let error = message.to_redis().unwrap_err().to_string();
            assert!(error.contains("deeper than 128 levels"), "{error}");
            let error = message.to_amqp().unwrap_err().to_string();
            assert!(error.contains("deeper than 128 levels"), "{error}");
            for value in [
                std::mem::take(&mut message.kwargs["payload"]),
                std::mem::take(&mut message.args)
                    .into_iter()
                    .next()
                    .unwrap_or_default(),
                std::mem::take(&mut message.embed.chain),
            ] {
                value.drop_iteratively();
            }
        }
        deep.drop_iteratively();
    });
}

#[test]
fn deep_values_convert_and_drop_without_recursion() {
    on_default_stack(|| {
        let deep = Json::from(nested_value(DEEP));
        assert!(deep.nests_deeper_than(DEEP - 1));
        assert!(!deep.nests_deeper_than(DEEP));
        deep.drop_iteratively();
        // Objects, arrays and scalars convert in order.
        let value = serde_json::json!({"a": 1.5, "b": [1, {"a": [true, "x"], "c": null}]});
        let json = Json::from(value.clone());
        assert_eq!(json, value);
        assert_eq!(
            json.to_string(),
            r#"{"a": 1.5, "b": [1, {"a": [true, "x"], "c": null}]}"#
        );
        assert!(!json.nests_deeper_than(4));
        assert!(json.nests_deeper_than(3));
        assert!(!Json::Null.nests_deeper_than(0));
    });
}
