//! `env` and `secrets` blocks.

use kdl::{KdlEntry, KdlNode, KdlValue};

use super::{Cx, valid_env_name};
use crate::diagnostic::{Code, Problem};
use crate::model::Env;

impl Cx {
    pub(super) fn env(&mut self, node: &KdlNode, env: &mut Env) {
        self.no_args(node);
        self.no_children(node);
        for entry in node.entries() {
            let Some(key) = entry.name() else { continue };
            let name = key.value();
            if !valid_env_name(name) {
                self.push(
                    Problem::new(
                        Code::InvalidValue,
                        key.span(),
                        format!("`{name}` is not a valid environment variable name"),
                        "invalid name",
                    )
                    .help("use letters, digits and `_`, not starting with a digit"),
                );
            }
            let Some(value) = self.scalar_string(entry) else {
                continue;
            };
            if env.insert(name.to_string(), value).is_some() {
                self.push(
                    Problem::new(
                        Code::DuplicateProperty,
                        key.span(),
                        format!("`{name}` is set twice in the same scope"),
                        "set again here",
                    )
                    .help("remove one of the two values"),
                );
            }
        }
    }

    pub(super) fn secrets(&mut self, node: &KdlNode, secrets: &mut Vec<String>) {
        self.props(node, &[]);
        self.no_children(node);
        for (name, span) in self.string_args(node, 1) {
            if !valid_env_name(&name) {
                self.push(
                    Problem::new(
                        Code::InvalidValue,
                        span,
                        format!("`{name}` is not a valid secret name"),
                        "invalid name",
                    )
                    .help(
                        "secrets reach steps as environment variables: use letters, digits and `_`",
                    ),
                );
            }
            if !secrets.contains(&name) {
                secrets.push(name);
            }
        }
    }
}

pub(super) fn env_entries(node: &KdlNode) -> impl Iterator<Item = (&KdlEntry, String)> {
    node.entries()
        .iter()
        .filter_map(|e| match (e.name(), e.value()) {
            (Some(_), KdlValue::String(s)) => Some((e, s.clone())),
            _ => None,
        })
}
