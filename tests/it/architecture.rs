//! The crate's layering, checked: every module of `src/` belongs to one layer and uses only
//! modules of its own layer or of lower ones, and no two modules use each other, directly or
//! through others. A folder module (`src/auth/`) counts as one module.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

/// Lowest first. The same order as the `//!` map in `src/lib.rs`.
const LAYERS: &[(&str, &[&str])] = &[
    (
        "leaves",
        &[
            "clock",
            "secrets",
            "tls",
            "paths",
            "config",
            "domain",
            "observability",
            "testing",
        ],
    ),
    (
        "services",
        &[
            "auth",
            "validate",
            "quota",
            "rate_limit",
            "store",
            "upstream",
            "settle",
            "reload",
        ],
    ),
    ("errors", &["error"]),
    (
        "http",
        &[
            "state",
            "http_guard",
            "routes",
            "router",
            "admin",
            "server",
            "run",
            "standin",
            "dev",
        ],
    ),
    // The fuzz entry points (behind the `fuzzing` feature) drive code of every layer.
    ("fuzzing", &["fuzzing"]),
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS
        .iter()
        .position(|(_, modules)| modules.contains(&module))
}

/// The top-level module a file of `src/` belongs to (`None` for lib.rs and main.rs).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let relative = file.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_owned())
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable src/") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments, string literals and char literals, so that only code is read.
fn code_only(source: &str) -> String {
    let bytes = source.as_bytes();
    let mut out = String::with_capacity(source.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'/' if bytes.get(i + 1) == Some(&b'/') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < bytes.len() && !(bytes[i] == b'*' && bytes[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            b => {
                out.push(b as char);
                i += 1;
            }
        }
    }
    out
}

fn ident_at(text: &str) -> &str {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    &text[..end]
}

/// The top-level modules a file names through `crate::`, in paths and in grouped `use`s.
fn modules_named(code: &str) -> BTreeSet<String> {
    let mut named = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `use crate::{a::X, b::{Y, Z}, c};`: the names at the group's top level.
            let mut depth = 0;
            let mut expecting_name = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => expecting_name = true,
                    c if expecting_name && depth == 0 && (c.is_ascii_alphabetic() || c == '_') => {
                        named.insert(ident_at(&group[i..]).to_owned());
                        expecting_name = false;
                    }
                    _ => {}
                }
            }
        } else {
            named.insert(ident_at(rest).to_owned());
        }
    }
    named
}

#[test]
fn modules_use_only_their_own_layer_and_lower_ones_without_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut uses: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut modules = BTreeSet::new();
    for file in &files {
        if let Some(module) = module_of(&src, file) {
            modules.insert(module);
        }
    }
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let code = code_only(&std::fs::read_to_string(file).expect("readable source"));
        let named: Vec<String> = modules_named(&code)
            .into_iter()
            .filter(|other| *other != module && modules.contains(other))
            .collect();
        uses.entry(module).or_default().extend(named);
    }

    let mut problems = Vec::new();
    for module in &modules {
        if layer_of(module).is_none() {
            problems.push(format!("src/{module}: in no layer; add it to LAYERS"));
        }
    }
    for (module, used) in &uses {
        for other in used {
            if let (Some(mine), Some(theirs)) = (layer_of(module), layer_of(other))
                && theirs > mine
            {
                problems.push(format!(
                    "{module} ({}) uses {other} ({}), a higher layer",
                    LAYERS[mine].0, LAYERS[theirs].0
                ));
            }
        }
    }
    // Cycles within a layer: a depth-first search finds a back edge.
    fn visit<'a>(
        module: &'a str,
        uses: &'a BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
        problems: &mut Vec<String>,
    ) {
        if let Some(start) = path.iter().position(|m| *m == module) {
            problems.push(format!("cycle: {} -> {module}", path[start..].join(" -> ")));
            return;
        }
        if !done.insert(module) {
            return;
        }
        path.push(module);
        for other in uses.get(module).into_iter().flatten() {
            visit(other, uses, path, done, problems);
        }
        path.pop();
    }
    let mut done = BTreeSet::new();
    for module in &modules {
        visit(module, &uses, &mut Vec::new(), &mut done, &mut problems);
    }
    assert!(
        problems.is_empty(),
        "layering broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_checker_sees_paths_and_grouped_uses() {
    let code = code_only(
        "use crate::{a::X, b::{Y, Z}, c};\nfn f() { crate::d::g(); let s = \"crate::e\"; }\n// crate::f\n",
    );
    let named: Vec<String> = modules_named(&code).into_iter().collect();
    assert_eq!(named, ["a", "b", "c", "d"]);
}
