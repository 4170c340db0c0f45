//! The crate's modules form layers that only point down: a module may use modules of lower
//! layers, never one of its own layer or above. The order is the one lib.rs's map describes;
//! this test reads every source file's `crate::` paths and fails on an import that points up or
//! sideways, naming the file and line.
#![allow(clippy::unwrap_used)] // Tests panic on unexpected errors by design.

use std::path::Path;

/// Lowest first. A module not listed here fails the test until it is given a layer.
const LAYERS: &[&[&str]] = &[
    &["event", "diag", "template", "text", "shell", "sys", "exit", "debuglog"],
    &["profile", "describe", "remote", "insight"],
    &["secrets", "health", "transport"],
    &["plan"],
    &["engine", "lock"],
    &["audit", "signature", "notify", "metrics"],
    &["session", "verify", "trail"],
    &["rollback", "check", "resume", "retention", "diff"],
    &["runner"],
    &["headless", "console"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The top-level module a source file belongs to (`src/transport/ssh/mod.rs` → `transport`).
fn module_of(path: &Path, src: &Path) -> Option<String> {
    let relative = path.strip_prefix(src).ok()?;
    let first = relative.components().next()?.as_os_str().to_string_lossy().into_owned();
    let name = first.trim_end_matches(".rs").to_string();
    (name != "lib" && name != "main").then_some(name)
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a line names through `crate::x` or `crate::{x, y::z}`.
fn used_modules(code: &str) -> Vec<String> {
    let word =
        |s: &str| -> String { s.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        match rest.strip_prefix('{') {
            Some(group) => {
                let group = group.split('}').next().unwrap_or_default();
                out.extend(group.split(',').map(word).filter(|w| !w.is_empty() && w != "self"));
            }
            None => out.push(word(rest)),
        }
    }
    out.retain(|w| !w.is_empty());
    out
}

#[test]
fn the_check_sees_grouped_imports() {
    assert_eq!(used_modules("use crate::{check, rollback::Prepared};"), ["check", "rollback"]);
    assert_eq!(used_modules("let x = crate::text::visible(&y);"), ["text"]);
}

#[test]
fn modules_only_use_modules_of_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut problems = Vec::new();
    for file in &files {
        let Some(module) = module_of(file, &src) else { continue };
        let Some(own) = layer_of(&module) else {
            problems.push(format!("{}: module `{module}` has no layer in tests/layers.rs", file.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for (number, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for used in used_modules(code) {
                if used == module {
                    continue;
                }
                match layer_of(&used) {
                    Some(layer) if layer < own => {}
                    Some(layer) => problems.push(format!(
                        "{}:{}: `{module}` (layer {own}) uses `{used}` (layer {layer}): layers only point down",
                        file.display(),
                        number + 1
                    )),
                    None => problems.push(format!("{}:{}: `{used}` has no layer", file.display(), number + 1)),
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
