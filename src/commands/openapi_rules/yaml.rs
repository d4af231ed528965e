//! YAML to JSON for OpenAPI documents, built from the parser's events so that anchors and
//! aliases are expanded under a budget: a few hundred bytes of nested aliases can otherwise
//! expand to gigabytes ("billion laughs").

use serde_json::{Map, Value};
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};
use yaml_rust2::Yaml;

/// The most JSON nodes a document may expand to, aliases included. Real API descriptions stay
/// far below it (the largest public ones hold a few hundred thousand nodes).
const NODE_BUDGET: usize = 4_000_000;

/// The deepest nesting accepted, as serde_json's own limit for JSON: deeper values could not be
/// walked or dropped without risking the stack.
const MAX_DEPTH: usize = 128;

/// Parses the first YAML document of `text` into JSON, or says what is wrong and at which line.
pub fn to_json(text: &str) -> Result<Value, String> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|error| {
        format!(
            "line {}, column {}: {}",
            error.marker().line(),
            error.marker().col() + 1,
            error.info()
        )
    })?;
    if let Some(error) = builder.error {
        return Err(error);
    }
    builder
        .root
        .ok_or_else(|| "the document is empty".to_string())
}

enum Open {
    Sequence(usize, Vec<Value>),
    Mapping(usize, Map<String, Value>, Option<String>),
}

#[derive(Default)]
struct Builder {
    stack: Vec<Open>,
    anchors: std::collections::HashMap<usize, Value>,
    root: Option<Value>,
    nodes: usize,
    error: Option<String>,
}

fn count_nodes(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(count_nodes).sum::<usize>(),
        Value::Object(map) => 1 + map.values().map(count_nodes).sum::<usize>(),
        _ => 1,
    }
}

fn scalar(text: String, style: TScalarStyle) -> Value {
    if style != TScalarStyle::Plain {
        return Value::String(text);
    }
    match Yaml::from_str(&text) {
        Yaml::Integer(number) => Value::from(number),
        Yaml::Real(real) => real
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or(Value::String(real)),
        Yaml::Boolean(flag) => Value::Bool(flag),
        Yaml::Null => Value::Null,
        _ => Value::String(text),
    }
}

/// A mapping key as text: OpenAPI keys are strings, but YAML reads `200:` as a number.
fn key_text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Null => Some("null".to_string()),
        Value::Array(_) | Value::Object(_) => None,
    }
}

impl Builder {
    fn fail(&mut self, mark: Marker, message: &str) {
        if self.error.is_none() {
            self.error = Some(format!(
                "line {}, column {}: {message}",
                mark.line(),
                mark.col() + 1
            ));
        }
    }

    /// Places a finished node in its parent (or as the document), remembering its anchor.
    fn insert(&mut self, value: Value, anchor: usize, mark: Marker) {
        if anchor > 0 {
            self.anchors.insert(anchor, value.clone());
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(value);
                }
            }
            Some(Open::Sequence(_, items)) => items.push(value),
            Some(Open::Mapping(_, map, pending)) => match pending.take() {
                None => match key_text(&value) {
                    Some(key) => *pending = Some(key),
                    None => self.fail(mark, "a mapping key is a list or a mapping"),
                },
                Some(key) => {
                    map.insert(key, value);
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        if self.error.is_some() {
            return;
        }
        match event {
            Event::Scalar(text, style, anchor, _) => {
                self.nodes += 1;
                let value = scalar(text, style);
                self.insert(value, anchor, mark);
            }
            Event::SequenceStart(_, _) | Event::MappingStart(_, _)
                if self.stack.len() >= MAX_DEPTH =>
            {
                self.fail(mark, &format!("nested deeper than {MAX_DEPTH} levels"));
            }
            Event::SequenceStart(anchor, _) => {
                self.nodes += 1;
                self.stack.push(Open::Sequence(anchor, Vec::new()));
            }
            Event::MappingStart(anchor, _) => {
                self.nodes += 1;
                self.stack.push(Open::Mapping(anchor, Map::new(), None));
            }
            Event::SequenceEnd | Event::MappingEnd => match self.stack.pop() {
                Some(Open::Sequence(anchor, items)) => {
                    self.insert(Value::Array(items), anchor, mark)
                }
                Some(Open::Mapping(anchor, map, _)) => {
                    self.insert(Value::Object(map), anchor, mark)
                }
                None => self.fail(mark, "a collection ends that never started"),
            },
            Event::Alias(anchor) => match self.anchors.get(&anchor) {
                Some(value) => {
                    // Counted before it is copied, so a bomb is refused before it takes memory.
                    self.nodes += count_nodes(value);
                    if self.nodes <= NODE_BUDGET {
                        let value = value.clone();
                        self.insert(value, 0, mark);
                    }
                }
                None => self.fail(mark, "an alias names an anchor not defined before it"),
            },
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
        if self.nodes > NODE_BUDGET {
            self.fail(
                mark,
                &format!(
                    "the document expands to more than {NODE_BUDGET} nodes (aliases included)"
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_keys_and_aliases_become_json() {
        let value = to_json("a: &x {b: 1, c: [true, null, 1.5, '2']}\nd: *x\n200: ok\n")
            .expect("the YAML converts");
        assert_eq!(value["a"]["c"], serde_json::json!([true, null, 1.5, "2"]));
        assert_eq!(value["d"], value["a"]);
        assert_eq!(value["200"], "ok");
    }

    #[test]
    fn errors_name_the_line_and_alias_bombs_are_refused() {
        let error = to_json("a: [1, 2\nb: c").unwrap_err();
        assert!(error.starts_with("line "), "{error}");
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut previous = 'a';
        for name in 'b'..='k' {
            bomb.push_str(&format!(
                "{name}: &{name} [*{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}]\n"
            ));
            previous = name;
        }
        let error = to_json(&bomb).unwrap_err();
        assert!(error.contains("expands to more than"), "{error}");
    }
}
