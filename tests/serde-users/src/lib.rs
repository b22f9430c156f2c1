//! A user's crate of events that depends on events-celery, with every serde shape an event can
//! take. Its tests prove events-celery leaves serde_json's behaviour alone for the rest of the
//! program, and that each shape survives the Celery codec.

use std::collections::BTreeMap;

use events_core::domain_event;
use serde::{Deserialize, Serialize};

/// An internally tagged event (`{"type": "Point", "x": …}`).
#[domain_event(name = "users.shape_drawn")]
#[derive(Debug, Clone, PartialEq)]
#[serde(tag = "type")]
pub enum ShapeDrawn {
    /// A point.
    Point {
        /// Across.
        x: f64,
        /// Up.
        y: f64,
    },
    /// A circle.
    Circle {
        /// Its radius.
        r: f64,
    },
}

/// An adjacently tagged value (`{"kind": "Ratio", "value": 0.5}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value")]
pub enum Measure {
    /// A ratio.
    Ratio(f64),
    /// A count.
    Count(u64),
    /// A range.
    Range {
        /// From.
        low: f64,
        /// To.
        high: f64,
    },
}

/// An untagged value: a number, or a labelled number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reading {
    /// A bare number.
    Plain(f64),
    /// A number with its unit.
    Labelled {
        /// The number.
        value: f64,
        /// Its unit.
        unit: String,
    },
}

/// Where an event happened: flattened into the events that have one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Position {
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
}

/// An event with every other shape: adjacently tagged and untagged fields, a flattened struct
/// and a flattened map of floats, and integers beyond 64 bits in plain fields.
#[domain_event(name = "users.sensor_read")]
#[derive(Debug, Clone, PartialEq)]
pub struct SensorRead {
    /// The sensor.
    pub sensor: String,
    /// Its measure.
    pub measure: Measure,
    /// Its readings.
    pub readings: Vec<Reading>,
    /// Where it is.
    #[serde(flatten)]
    pub position: Position,
    /// A serial number beyond 64 bits.
    pub serial: u128,
    /// An offset below `i64::MIN`.
    pub offset: i128,
    /// Anything else, by name.
    #[serde(flatten)]
    pub extra: BTreeMap<String, f64>,
}
