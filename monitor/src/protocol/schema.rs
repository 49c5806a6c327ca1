//! docs/schemas, generated: one JSON Schema (draft 2020-12) per request and reply of
//! [`super`], from the types themselves (schemars), plus the envelope serde adds around
//! them — the `"cmd"`/`"type"` tag and the echoed `"id"`. `connmon generate-assets
//! --schemas docs/schemas` rewrites them; a unit test fails when the checked-in files
//! differ from what the types say.
//!
//! The events (`event-*.json`) come from the types the pipeline serializes them from
//! (`bus::json`, `policy::decision`, `stats`), and `snapshot.json` from
//! [`super::SnapshotMessage`] (the policy's snapshot and the server's counters).

use std::path::{Path, PathBuf};

use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::{Map, Value, json};

use super::{
    Bye, Error, Evict, Hello, Lagged, Ping, Pong, Pool, Reinstate, Snapshot, SnapshotMessage,
    Subscribe, Success,
};
use crate::{
    bus::json::{ConnectLine, SynRetransmitLine},
    policy::decision::{Diagnosis, Eviction, Reinstatement, Suspicion},
    stats::Stats,
};

/// Where the checked-in files live, relative to the repository.
pub const DIR: &str = "docs/schemas";
const ID_BASE: &str = "https://github.com/connmon/connmon/docs/schemas/";

#[derive(Debug, thiserror::Error)]
#[error("writing {path}: {source}")]
pub struct SchemaError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Which side sends a message, and so which key tags it and whether it carries `id`.
#[derive(Clone, Copy)]
enum Envelope {
    /// A request: `"cmd"`, optional `"id"`.
    Request,
    /// A reply to a request: `"type"`, the request's `"id"` when it had one.
    Reply,
    /// A server message that answers no request: `"type"`, no `"id"`.
    Notice,
    /// An event of the stream (stdout, `subscribe`): `"type"`, no `"id"`.
    Event,
}

/// Every generated file: name (without `.json`) and its schema.
pub fn all() -> Vec<(String, Value)> {
    use Envelope::{Event, Notice, Reply, Request};
    vec![
        file::<Subscribe>("subscribe", Request),
        file::<Snapshot>("snapshot", Request),
        file::<Ping>("ping", Request),
        file::<Pool>("pool", Request),
        file::<Evict>("evict", Request),
        file::<Reinstate>("reinstate", Request),
        file::<Hello>("hello", Notice),
        file::<Success>("ok", Reply),
        file::<Error>("error", Reply),
        file::<Pong>("pong", Reply),
        file::<Lagged>("lagged", Notice),
        file::<Bye>("bye", Notice),
        file::<SnapshotMessage>("snapshot", Reply),
        file::<ConnectLine<'_>>("connect", Event),
        file::<SynRetransmitLine<'_>>("syn_retransmit", Event),
        file::<Eviction>("evict", Event),
        file::<Reinstatement>("reinstate", Event),
        file::<Suspicion>("suspect", Event),
        file::<Diagnosis>("diagnosis", Event),
        file::<Stats>("stats", Event),
    ]
}

/// The file's text: pretty JSON and a final newline.
pub fn render(schema: &Value) -> String {
    let mut text = serde_json::to_string_pretty(schema).expect("schemas serialize");
    text.push('\n');
    text
}

/// Writes every generated schema into `dir`; returns the files written.
pub fn write(dir: &Path) -> Result<Vec<PathBuf>, SchemaError> {
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SchemaError { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    let mut written = Vec::new();
    for (name, schema) in all() {
        let path = dir.join(format!("{name}.json"));
        std::fs::write(&path, render(&schema)).map_err(err(&path))?;
        written.push(path);
    }
    Ok(written)
}

fn file<T: JsonSchema>(name: &str, envelope: Envelope) -> (String, Value) {
    let settings = SchemaSettings::draft2020_12().with(|s| s.inline_subschemas = true);
    // What the server writes is described as serialized (a key serde may skip is
    // optional); what the client sends, as deserialized.
    let settings = match envelope {
        Envelope::Request => settings,
        Envelope::Reply | Envelope::Notice | Envelope::Event => settings.for_serialize(),
    };
    let generator = settings.into_generator();
    let mut schema = generator.into_root_schema_for::<T>().to_value();
    let Value::Object(map) = &mut schema else {
        unreachable!("a struct or enum has an object schema")
    };
    // The Rust type's name is no title for a wire message.
    map.remove("title");
    let (file, tag, title) = match envelope {
        Envelope::Request => (
            format!("cmd-{name}"),
            "cmd",
            format!("{name} (client \u{2192} server)"),
        ),
        Envelope::Reply | Envelope::Notice => (
            name.to_owned(),
            "type",
            format!("{name} (server \u{2192} client)"),
        ),
        Envelope::Event => (format!("event-{name}"), "type", format!("{name} event")),
    };
    add_envelope(
        map,
        tag,
        name,
        matches!(envelope, Envelope::Request | Envelope::Reply),
    );
    if matches!(envelope, Envelope::Event) || name == "snapshot" {
        close_nested(map);
    }
    map.insert("$id".into(), format!("{ID_BASE}{file}.json").into());
    map.insert("title".into(), title.into());
    (file, schema)
}

/// Adds the tag (`"cmd": "pool"`, `"type": "ok"`) and `id` to an object schema, or to
/// each alternative of a tagged enum's.
fn add_envelope(schema: &mut Map<String, Value>, tag: &str, name: &str, id: bool) {
    for key in ["oneOf", "anyOf"] {
        // The keys beside the alternatives (a struct that flattens a tagged enum) move
        // into each: a closed alternative must list every key it allows.
        let shared = schema.remove("properties");
        let shared_required = schema.remove("required");
        if let Some(Value::Array(alternatives)) = schema.get_mut(key) {
            for alternative in alternatives {
                if let Value::Object(alternative) = alternative {
                    merge(alternative, shared.as_ref(), shared_required.as_ref());
                    add_envelope(alternative, tag, name, id);
                }
            }
            schema.remove("type");
            return;
        }
        let restore = [("properties", shared), ("required", shared_required)];
        for (k, v) in restore {
            if let Some(v) = v {
                schema.insert(k.into(), v);
            }
        }
    }
    schema.insert("type".into(), "object".into());
    let properties = schema
        .entry("properties")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(properties) = properties {
        properties.insert(tag.into(), json!({ "const": name }));
        if id {
            properties.insert(
                "id".into(),
                json!({"type": ["string", "number"], "description": "the request's id, echoed"}),
            );
        }
    }
    let required = schema
        .entry("required")
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(required) = required {
        required.retain(|k| k != tag);
        required.insert(0, tag.into());
    }
    // Every message is closed: keys not in the type are errors (requests) or absent
    // (replies); new keys come with a new version of the file.
    schema.insert("additionalProperties".into(), false.into());
}

/// Closes every object below the message's own: the pipeline's types have no open maps,
/// so a key not in the type is an error (the snapshot's `server` included).
fn close_nested(schema: &mut Map<String, Value>) {
    let mut stack: Vec<&mut Value> = schema
        .iter_mut()
        .filter(|(k, _)| matches!(k.as_str(), "properties" | "oneOf" | "anyOf" | "items"))
        .map(|(_, v)| v)
        .collect();
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(items) => stack.extend(items.iter_mut()),
            Value::Object(object) => {
                if object.contains_key("properties") && !object.contains_key("oneOf") {
                    object
                        .entry("additionalProperties")
                        .or_insert(Value::Bool(false));
                }
                stack.extend(
                    object
                        .values_mut()
                        .filter(|v| v.is_object() || v.is_array()),
                );
            }
            _ => {}
        }
    }
}

/// Adds `properties` and `required` to those of `schema`.
fn merge(schema: &mut Map<String, Value>, properties: Option<&Value>, required: Option<&Value>) {
    if let Some(Value::Object(properties)) = properties
        && let Value::Object(own) = schema
            .entry("properties")
            .or_insert_with(|| Value::Object(Map::new()))
    {
        own.extend(properties.clone());
    }
    if let Some(Value::Array(required)) = required
        && let Value::Array(own) = schema
            .entry("required")
            .or_insert_with(|| Value::Array(Vec::new()))
    {
        own.extend(required.iter().cloned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked_in() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(DIR)
    }

    #[test]
    fn checked_in_schemas_are_current() {
        let dir = checked_in();
        let mut stale = Vec::new();
        for (name, schema) in all() {
            let path = dir.join(format!("{name}.json"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text != render(&schema) {
                stale.push(path.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "out of date (run `cargo run -p monitor -- generate-assets --schemas docs/schemas`): {stale:?}"
        );
    }

    #[test]
    fn each_message_is_tagged_and_closed() {
        for (name, schema) in all() {
            let text = render(&schema);
            assert!(text.contains("\"const\""), "{name}: no tag\n{text}");
            assert!(
                text.contains("\"additionalProperties\": false"),
                "{name}: open\n{text}"
            );
            assert_eq!(
                schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
                "{name}"
            );
        }
    }
}
