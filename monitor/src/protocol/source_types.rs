//! JSON Schemas of the decoded kernel records' types (`source/`), for the generated
//! event and snapshot schemas: the values come from the types (`Outcome::ALL`, serde's
//! own names), so a new outcome or family reaches docs/schemas by regeneration.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::{Map, Value};

use crate::source::{
    cgroup::CgroupOrigin,
    event::{Comm, Family, Outcome, OutcomeCounts},
};

/// `impl JsonSchema for $ty`, named `$ty`, whose schema is the block `$schema`.
macro_rules! schema {
    ($ty:ident, $schema:block) => {
        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }

            fn json_schema(_: &mut SchemaGenerator) -> Schema $schema
        }
    };
}

/// The names serde writes for `values`.
fn names<T: serde::Serialize>(values: &[T]) -> Vec<Value> {
    values
        .iter()
        .map(|v| serde_json::to_value(v).expect("unit variants serialize"))
        .collect()
}

/// A count, as schemars writes a `u64`.
fn count() -> Value {
    serde_json::json!({"type": "integer", "format": "uint64", "minimum": 0})
}

schema!(Outcome, {
    json_schema!({
        "description": "How one outgoing connect attempt ended.",
        "type": "string",
        "enum": names(&Outcome::ALL),
    })
});

schema!(OutcomeCounts, {
    let properties: Map<String, Value> = Outcome::ALL
        .iter()
        .map(|o| (o.as_str().to_owned(), count()))
        .collect();
    let required: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
    json_schema!({
        "description": "A count per outcome.",
        "type": "object",
        "properties": properties,
        "required": required,
    })
});

schema!(Family, {
    // Every variant, checked by the compiler: a new family fails to build here.
    let all = [Family::Ipv4, Family::Ipv6].map(|f| match f {
        Family::Ipv4 | Family::Ipv6 => f,
    });
    json_schema!({
        "description": "Address family of the socket (a v4-mapped IPv6 socket is ipv6 with IPv4 addresses).",
        "type": "string",
        "enum": names(&all),
    })
});

schema!(Comm, {
    json_schema!({
        "description": "The task's command name (comm), at most 15 bytes.",
        "type": "string",
    })
});

schema!(CgroupOrigin, {
    json_schema!({
        "type": "object",
        "properties": {
            "cgroup": {
                "description": "cgroup v2 path of cgroup_id, when resolved (absent if the cgroup was gone before connmon looked)",
                "type": "string",
            },
            "container": {
                "description": "container id from a Docker, containerd, CRI-O or Podman cgroup name in the path",
                "type": "string",
                "pattern": "^[0-9a-f]{64}$",
            },
            "pod_uid": {
                "description": "Kubernetes pod UID from a kubepods path",
                "type": "string",
            },
        },
        "required": ["cgroup"],
    })
});
