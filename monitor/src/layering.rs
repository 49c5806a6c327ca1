//! The layering, checked: data flows kernel → source → table → policy → consumers, and
//! no module below imports one above it. A test reads the sources and fails on an
//! import against the flow.

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The first path segment of every `crate::…` import in `text`, including each item
    /// of a `crate::{a::…, b}` group.
    fn crate_imports(text: &str) -> Vec<String> {
        let ident = |s: &str| -> String {
            s.trim_start()
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect()
        };
        let mut out = Vec::new();
        for (at, _) in text.match_indices("crate::") {
            let rest = &text[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 1;
                let mut item_start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 1 => break,
                        '}' => depth -= 1,
                        ',' if depth == 1 => item_start = true,
                        c if item_start && depth == 1 && !c.is_whitespace() => {
                            out.push(ident(&group[i..]));
                            item_start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                out.push(ident(rest));
            }
        }
        out
    }

    /// Every `.rs` file of `path` (a file, or a directory read recursively) with the
    /// modules it imports from `crate`.
    fn imports_of(path: &Path) -> Vec<(String, String)> {
        let mut files = vec![path.to_path_buf()];
        let mut out = Vec::new();
        while let Some(p) = files.pop() {
            if p.is_dir() {
                for entry in std::fs::read_dir(&p).expect("readable source dir") {
                    files.push(entry.expect("dir entry").path());
                }
            } else if p.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&p).expect("readable source file");
                for m in crate_imports(&text) {
                    out.push((p.display().to_string(), m));
                }
            }
        }
        out
    }

    #[test]
    fn the_crate_import_parser_sees_groups() {
        assert_eq!(
            crate_imports("use crate::{a::b, c::{d, e}, f};\nlet x = crate::g::h();"),
            ["a", "c", "f", "g"]
        );
    }

    #[test]
    fn no_module_imports_against_the_data_flow() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let consumers = ["agent", "cli", "sinks", "server", "export", "control"];
        let rules: [(&str, &[&str]); 5] = [
            ("config.rs", &consumers),
            ("config", &consumers),
            ("bus.rs", &["agent", "cli", "sinks", "server", "export"]),
            ("bus", &["agent", "cli", "sinks", "server", "export"]),
            ("policy", &[&consumers[..], &["config", "bus"]].concat()),
        ];
        let mut bad = Vec::new();
        for (path, forbidden) in rules {
            for (file, module) in imports_of(&src.join(path)) {
                if forbidden.contains(&module.as_str()) {
                    bad.push(format!("{file} imports crate::{module}"));
                }
            }
        }
        assert!(
            bad.is_empty(),
            "imports against the data flow:\n{}",
            bad.join("\n")
        );
    }
}
