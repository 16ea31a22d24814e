//! The layer rules of ARCHITECTURE.md, checked against the code.
//!
//! ARCHITECTURE.md holds the rules once, in its fenced `layers` block: each
//! line names a layer and its modules, lowest first. This test reads that
//! block and every `crate::` path in `src/` (the binaries excepted: they sit
//! on top and may use anything), and fails when a module imports one of a
//! higher layer, when the imports form a cycle, or when a module of the
//! library is missing from the table. It reads text, not the compiler's
//! resolution: a `crate::name` anywhere in code (not in a comment) counts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first: (layer name, its modules).
fn layers(architecture: &str) -> Vec<(String, Vec<String>)> {
    let block = architecture
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("ARCHITECTURE.md has a ```layers block");
    block
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let (name, mods) = l
                .split_once(':')
                .unwrap_or_else(|| panic!("a layers line is `name: module, module`: {l:?}"));
            let mods = mods
                .split(',')
                .map(|m| m.trim().to_owned())
                .filter(|m| !m.is_empty())
                .collect();
            (name.trim().to_owned(), mods)
        })
        .collect()
}

/// Code without its comments (line comments, doc comments and block
/// comments), so that a doc link such as [`crate::store`] is not an import.
/// String literals are kept whole, so a `//` inside one is not a comment.
fn strip_comments(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        let c = b[i];
        if in_str {
            out.push(c as char);
            if c == b'\\' && i + 1 < b.len() {
                out.push(b[i + 1] as char);
                i += 2;
                continue;
            }
            if c == b'"' {
                in_str = false;
            }
            i += 1;
        } else if c == b'"' {
            in_str = true;
            out.push('"');
            i += 1;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            while i < b.len() && !b[i..].starts_with(b"*/") {
                i += 1;
            }
            i += 2;
        } else if c == b'\'' && i + 2 < b.len() && b[i + 2] == b'\'' {
            // A char literal such as '"' must not open a string.
            out.push_str(&src[i..i + 3]);
            i += 3;
        } else {
            out.push(c as char);
            i += 1;
        }
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules a piece of code names through `crate::`, whether
/// as `crate::a::b`, `use crate::{a, b::{c, d}}` or over several lines.
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The group's top-level items, up to its closing brace.
            let mut depth = 0;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start && depth == 0 => {
                        found.insert(ident(&group[i..]).to_owned());
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            found.insert(ident(rest).to_owned());
        }
    }
    found.remove("");
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Each library module (by its top-level name) with the modules it imports.
fn import_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        if first == "bin" || first == "lib.rs" {
            continue;
        }
        let module = first.trim_end_matches(".rs").to_owned();
        let code = strip_comments(&std::fs::read_to_string(&file).unwrap());
        let deps = graph.entry(module.clone()).or_default();
        deps.extend(imports(&code).into_iter().filter(|d| *d != module));
    }
    graph
}

/// The modules `lib.rs` declares.
fn declared_modules(lib: &str) -> BTreeSet<String> {
    strip_comments(lib)
        .lines()
        .filter_map(|l| {
            l.trim()
                .strip_prefix("pub mod ")
                .or(l.trim().strip_prefix("mod "))
        })
        .map(|m| m.trim_end_matches(';').trim().to_owned())
        .collect()
}

/// Every cycle's modules (strongly connected components of more than one).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two modules are in one cycle when each reaches the other.
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_owned()];
        while let Some(m) = todo.pop() {
            for d in graph.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut out: Vec<Vec<String>> = Vec::new();
    for m in graph.keys() {
        if !reaches[m].contains(m) || out.iter().any(|c| c.contains(m)) {
            continue;
        }
        let comp = graph
            .keys()
            .filter(|n| reaches[m].contains(*n) && reaches[*n].contains(m))
            .cloned()
            .collect();
        out.push(comp);
    }
    out
}

/// What breaks the rules: one line per problem, empty when the code obeys.
fn violations(root: &Path) -> Vec<String> {
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let layers = layers(&architecture);
    let mut layer_of: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (rank, (name, mods)) in layers.iter().enumerate() {
        for m in mods {
            if layer_of.insert(m.clone(), (rank, name.clone())).is_some() {
                problems.push(format!("`{m}` is in two layers of ARCHITECTURE.md"));
            }
        }
    }
    let lib = std::fs::read_to_string(root.join("src/lib.rs")).unwrap();
    for m in declared_modules(&lib) {
        if !layer_of.contains_key(&m) {
            problems.push(format!(
                "module `{m}` (src/lib.rs) is in no layer of ARCHITECTURE.md's ```layers block"
            ));
        }
    }
    for m in layer_of.keys() {
        if !declared_modules(&lib).contains(m) {
            problems.push(format!(
                "ARCHITECTURE.md's layers name `{m}`, which src/lib.rs does not declare"
            ));
        }
    }
    let graph = import_graph(&root.join("src"));
    for (m, deps) in &graph {
        let Some((rank, layer)) = layer_of.get(m) else {
            continue;
        };
        for d in deps {
            match layer_of.get(d) {
                Some((dr, dlayer)) if dr > rank => problems.push(format!(
                    "`{m}` ({layer}) imports `{d}` ({dlayer}), a higher layer"
                )),
                Some(_) => {}
                None => problems.push(format!("`{m}` imports `crate::{d}`, which is in no layer")),
            }
        }
    }
    for cycle in cycles(&graph) {
        problems.push(format!("an import cycle: {}", cycle.join(", ")));
    }
    problems
}

#[test]
fn the_modules_keep_to_their_layers_and_import_no_cycle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let problems = violations(root);
    assert!(
        problems.is_empty(),
        "the code breaks ARCHITECTURE.md's layer rules:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn the_import_reader_sees_groups_nested_paths_and_skips_comments() {
    let code = strip_comments(
        "use crate::{a, b::{C, D},\n    e::F};\n// crate::g\n/// [`crate::h`]\n\
         let x = crate::i::j(); let s = \"// crate::k\"; let c = '\"'; crate::l::m();\n",
    );
    let got: Vec<String> = imports(&code).into_iter().collect();
    assert_eq!(got, ["a", "b", "e", "i", "k", "l"]);
}

#[test]
fn a_cycle_is_found_with_all_its_modules() {
    let g: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(m, ds)| (m.to_owned(), ds.into_iter().map(str::to_owned).collect()))
    .collect();
    assert_eq!(cycles(&g), vec![vec!["a", "b", "c"]]);
}
