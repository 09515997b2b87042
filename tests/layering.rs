//! The module layering of `src/`, checked: every `crate::X` path (in a
//! `use` or inline) is an edge from the module whose file it is in to the
//! top-level module `X`. The graph must be acyclic and follow the request's
//! flow (GUIDE.md): `config` → `registry` → `router` → `balance` → `proxy`
//! → `health` → `admin` → `app`, with `clock` and `tls` leaves below them all,
//! `registrar` (the client side, which talks to the admin API over HTTP)
//! beside `admin`, and `demo` (which runs the app) on top. A module may
//! import only modules of a lower layer, except for the few edges listed
//! in `EXCEPTIONS` with their reasons.
//!
//! Test code is left out (files named `tests.rs`, files under a `tests/`
//! folder, and a file's inline `#[cfg(test)] mod tests` block): tests may
//! build the world they need from any layer.
//!
//! `cargo test --test layering -- --nocapture` prints the graph.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Layer of each top-level module; a module may import only strictly lower
/// layers. Modules on one layer must not import each other.
const LAYERS: &[(&str, u8)] = &[
    // Leaves: the clock, and TLS material (certificates, keys), which the
    // config loads at validation.
    ("clock", 0),
    ("tls", 0),
    ("config", 1),
    ("registry", 2),
    ("router", 3),
    ("balance", 4),
    ("proxy", 5),
    ("health", 6),
    ("admin", 7),
    ("registrar", 7),
    ("app", 8),
    // `wayfinder demo` runs the app with built-in instances.
    ("demo", 9),
    // The hooks the fuzz targets drive (feature `fuzzing`): nothing imports
    // them.
    ("fuzzing", 10),
];

/// Edges that go against the layer order, each with the reason it is
/// allowed. Keep this list short.
const EXCEPTIONS: &[(&str, &str, &str)] = &[
    (
        "registry",
        "router",
        "the snapshot publishes the routing table and the instances in one \
         swap, so a request never sees routes and instances of two different \
         versions; the router itself imports only config",
    ),
    (
        "proxy",
        "health",
        "the forwarding path reports each attempt's outcome to passive health \
         (a few atomic updates on the request path); health never calls into \
         the proxy's request handling",
    ),
];

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            if path.file_name().is_some_and(|n| n != "tests") {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && path.file_name().is_some_and(|n| n != "tests.rs")
        {
            out.push(path);
        }
    }
}

/// The top-level module a file under `src/` belongs to; `None` for the
/// crate roots.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_owned())
}

/// The file's code without its inline test module and without comments.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]")
            && lines
                .peek()
                .is_some_and(|next| next.trim_start().starts_with("mod tests {"))
        {
            // The inline test module runs to the end of the file.
            break;
        }
        if t.starts_with("//") {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The top-level modules named by `crate::X` paths in `code`, including
/// those inside `crate::{X::.., Y}` groups.
fn imports(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + "crate::".len()..];
        if before.is_some_and(|c| is_ident(c) || c == ':' || c == '$') {
            continue; // `$crate::`, `wayfinder_crate::`, `super::crate::`...
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: those at brace depth 0.
            let mut depth = 0;
            let mut name = String::new();
            let mut at_start = true;
            for c in group.chars() {
                if is_ident(c) {
                    if depth == 0 && at_start {
                        name.push(c);
                    }
                    continue;
                }
                if !name.is_empty() {
                    out.insert(std::mem::take(&mut name));
                }
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        at_start = true;
                        continue;
                    }
                    _ => {}
                }
                if !c.is_whitespace() {
                    at_start = false;
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// The module-level import graph of `src/`.
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let Some(module) = module_of(&src, &file) else {
            continue;
        };
        let text = fs::read_to_string(&file).unwrap();
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(imports(&code(&text)).into_iter().filter(|m| *m != module));
    }
    graph
}

/// A cycle in `graph`, if there is one.
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit<'a>(
        node: &'a str,
        graph: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| *n == node) {
            let mut cycle: Vec<String> = path[i..].iter().map(|s| s.to_string()).collect();
            cycle.push(node.to_owned());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for dep in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(dep, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, graph, &mut Vec::new(), &mut done) {
            return Some(cycle);
        }
    }
    None
}

fn print(graph: &BTreeMap<String, BTreeSet<String>>) {
    println!("use crate:: import graph of src/ (test code left out):");
    for (module, deps) in graph {
        let deps: Vec<&str> = deps.iter().map(String::as_str).collect();
        println!("  {module} -> {}", deps.join(", "));
    }
}

#[test]
fn import_graph_is_acyclic() {
    let graph = graph();
    print(&graph);
    assert!(graph.contains_key("registry") && graph.contains_key("proxy"));
    if let Some(cycle) = find_cycle(&graph) {
        panic!("import cycle in src/: {}", cycle.join(" -> "));
    }
}

#[test]
fn lower_layers_do_not_import_higher_ones() {
    let graph = graph();
    let layer = |m: &str| LAYERS.iter().find(|(n, _)| *n == m).map(|(_, l)| *l);
    let mut wrong = Vec::new();
    for (module, deps) in &graph {
        let Some(from) = layer(module) else {
            wrong.push(format!("{module}: not in LAYERS; give it a layer"));
            continue;
        };
        for dep in deps {
            let Some(to) = layer(dep) else {
                wrong.push(format!("{module} -> {dep}: {dep} not in LAYERS"));
                continue;
            };
            let excepted = EXCEPTIONS.iter().any(|(a, b, _)| a == module && b == dep);
            if to >= from && !excepted {
                wrong.push(format!(
                    "{module} (layer {from}) imports {dep} (layer {to})"
                ));
            }
        }
    }
    for (a, b, _) in EXCEPTIONS {
        assert!(
            graph.get(*a).is_some_and(|d| d.contains(*b)),
            "exception {a} -> {b} is no longer needed: remove it"
        );
    }
    if !wrong.is_empty() {
        print(&graph);
        panic!("layering violations:\n  {}", wrong.join("\n  "));
    }
}

#[test]
fn the_parser_sees_every_form_of_path() {
    let code = code(
        "use crate::a::B;\nuse crate::{b::C, c, d::{e, f}};\n// crate::commented\n\
         fn x() { crate::g::h(); $crate::not(); }\n#[cfg(test)]\nmod tests {\n use crate::t;\n}\n",
    );
    let found: Vec<String> = imports(&code).into_iter().collect();
    assert_eq!(found, ["a", "b", "c", "d", "g"]);
}
