//! The message model's tests: arguments bound to the payload, every header read and checked,
//! headers written in Celery's order.

use std::time::Duration;

use serde_json::json;

use super::super::json::Json;
use super::super::timestamp::isoformat;
use super::{HeadersJson, ParsedHeaders, TaskMessage, push_headers_json};

fn pairs(value: &str) -> Vec<(String, Json)> {
    match Json::parse(value).unwrap() {
        Json::Object(map) => map.into_iter().collect(),
        _ => unreachable!("test input is an object"),
    }
}

fn with_arguments(args: serde_json::Value, kwargs: serde_json::Value) -> TaskMessage {
    let (Json::Array(args), Json::Object(kwargs)) = (Json::from(args), Json::from(kwargs)) else {
        unreachable!("test input is a list and an object")
    };
    TaskMessage {
        task: "domain_events.t".into(),
        args,
        kwargs,
        ..TaskMessage::default()
    }
}

#[test]
fn arguments_bind_to_payload_as_python_binds_them() {
    // kwargs={"payload": …} (what Celery's send_task and this crate write), or the payload
    // alone as the one positional argument: both run in Python, both bind here.
    let keyword = with_arguments(json!([]), json!({"payload": {"a": 1}}));
    assert_eq!(keyword.payload_value().unwrap(), &json!({"a": 1}));
    let positional = with_arguments(json!([{"a": 2}]), json!({}));
    assert_eq!(positional.payload_value().unwrap(), &json!({"a": 2}));
}

#[test]
fn extra_or_missing_arguments_are_refused_naming_what_is_extra() {
    for (args, kwargs, expected) in [
        (
            json!([1, "two"]),
            json!({"payload": {}}),
            &[
                "2 positional argument(s) besides the `payload`",
                "the number 1",
                "the string \"two\"",
            ][..],
        ),
        (
            json!([]),
            // (`json!` sorts keys; a message keeps its own order.)
            json!({"payload": {}, "user_id": 7, "trace": "x"}),
            &["unexpected keyword argument(s) `trace`, `user_id`"],
        ),
        (
            json!([{}, 3]),
            json!({}),
            &["1 positional argument(s) after the payload", "the number 3"],
        ),
        (
            json!([{}]),
            json!({"payload": {}}),
            &["1 positional argument(s) besides the `payload` keyword argument"],
        ),
        (
            json!([{}]),
            json!({"extra": 1}),
            &["unexpected keyword argument(s) `extra`"],
        ),
        (json!([]), json!({}), &["no `payload` keyword argument"]),
        (
            json!([]),
            json!({"other": 1}),
            &[
                "no `payload` keyword argument",
                "unexpected keyword argument(s) `other`",
            ],
        ),
        (
            json!([1, 2, 3, 4, 5, 6, 7, 8]),
            json!({}),
            &["7 positional argument(s) after the payload", "and 2 more"],
        ),
    ] {
        let message = with_arguments(args.clone(), kwargs.clone());
        assert_eq!(message.payload_value(), None, "{args} {kwargs}");
        let reason = message.bind_payload().unwrap_err();
        for word in expected {
            assert!(
                reason.contains(word),
                "{args} {kwargs}: `{word}` not in: {reason}"
            );
        }
        assert!(reason.contains("TypeError"), "{reason}");
    }
    // Hostile names are listed briefly: a few, each clipped.
    let many: serde_json::Map<String, serde_json::Value> = (0..1000)
        .map(|i| (format!("{}{i}", "k".repeat(10_000)), json!(i)))
        .collect();
    let mut kwargs = many;
    kwargs.insert("payload".into(), json!({}));
    let reason = with_arguments(json!([]), serde_json::Value::Object(kwargs))
        .bind_payload()
        .unwrap_err();
    assert!(reason.len() < 1024, "{} bytes", reason.len());
    assert!(reason.contains("and 995 more"), "{reason}");
}

#[test]
fn reads_every_celery_header_and_keeps_custom_ones_in_order() {
    let parsed = ParsedHeaders::read(
        pairs(
            r#"{
            "lang": "py", "task": "t", "id": "i", "shadow": null,
            "eta": "2026-11-26T09:08:59.059617+00:00", "expires": null, "group": "g",
            "group_index": 2, "retries": 3, "timelimit": [10, 5.5], "root_id": "r",
            "parent_id": "p", "argsrepr": "()", "kwargsrepr": "{}", "origin": "o",
            "ignore_result": false, "replaced_task_nesting": 1,
            "stamped_headers": ["a"], "stamps": {"a": 1},
            "x-z": 1, "x-a": "2"
        }"#,
        ),
        true,
    )
    .unwrap();
    assert_eq!(parsed.task.as_deref(), Some("t"));
    assert_eq!(parsed.id.as_deref(), Some("i"));
    let h = parsed.headers;
    assert_eq!(h.retries, 3);
    assert_eq!(h.group_index, Some(2));
    assert_eq!(h.timelimit.hard_duration(), Some(Duration::from_secs(10)));
    assert_eq!(
        h.timelimit.soft_duration(),
        Some(Duration::from_millis(5500))
    );
    assert_eq!(h.ignore_result, Some(false));
    assert_eq!(h.stamped_headers, Some(vec!["a".to_owned()]));
    assert_eq!(
        isoformat(&h.eta.unwrap()),
        "2026-11-26T09:08:59.059617+00:00"
    );
    assert_eq!(
        h.custom,
        vec![
            ("x-z".to_owned(), Json::from(1)),
            ("x-a".to_owned(), Json::from("2"))
        ]
    );
}

#[test]
fn wrong_header_types_are_named() {
    for (header, value, expected) in [
        (
            "task",
            json!(1),
            "header `task` must be a string, found the number 1",
        ),
        (
            "retries",
            json!(-1),
            "header `retries` must be an integer from 0 to 4294967295, found the number -1",
        ),
        (
            "eta",
            json!("soon"),
            "header `eta` must be an ISO-8601 datetime or null, found the string \"soon\"",
        ),
        (
            "timelimit",
            json!([1]),
            "header `timelimit` must be [hard, soft] (numbers or nulls), found an array",
        ),
        (
            "stamps",
            json!([]),
            "header `stamps` must be an object or null, found an array",
        ),
    ] {
        let error =
            ParsedHeaders::read([(header.to_owned(), Json::from(value))], true).unwrap_err();
        assert_eq!(error.to_string(), expected);
    }
}

#[test]
fn headers_are_written_in_celery_order() {
    let mut message = TaskMessage {
        task: "t".into(),
        id: "i".into(),
        ..TaskMessage::default()
    };
    message
        .headers
        .custom
        .push(("x-trace-id".into(), "abc".into()));
    // Celery 5.7's order (`amqp.as_task_v2`), spelled out here rather than taken from the
    // codec's table, so that a change to the table shows.
    let expected = [
        "lang",
        "task",
        "id",
        "shadow",
        "eta",
        "expires",
        "group",
        "group_index",
        "retries",
        "timelimit",
        "root_id",
        "parent_id",
        "argsrepr",
        "kwargsrepr",
        "origin",
        "ignore_result",
        "replaced_task_nesting",
        "stamped_headers",
        "stamps",
        "x-trace-id",
    ];
    let json = Json::from_serialize(&HeadersJson(&message)).unwrap();
    let names: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, expected);
    let mut direct = String::new();
    push_headers_json(&mut direct, &message).unwrap();
    let json = Json::parse(&direct).unwrap();
    let names: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(names, expected);
    let amqp = message.to_amqp().unwrap();
    let names: Vec<&str> = amqp
        .headers
        .0
        .iter()
        .map(|(name, _)| name.as_str())
        .collect();
    assert_eq!(names, expected);
}
