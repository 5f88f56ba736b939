//! The host tool's module structure: dependencies between `src/` modules point one way
//! (no import cycle such as the former kbuild → setup → qemu → kbuild).

use std::collections::BTreeMap;
use std::path::Path;

/// Module name → the crate modules its source mentions (`crate::NAME`).
fn module_graph() -> BTreeMap<String, Vec<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut mods = Vec::new();
    for e in std::fs::read_dir(&src).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_stem().unwrap().to_string_lossy().into_owned();
        if p.extension().is_some_and(|x| x == "rs") && name != "lib" && name != "main" {
            mods.push(name);
        }
    }
    let mut graph = BTreeMap::new();
    for m in &mods {
        let text = std::fs::read_to_string(src.join(format!("{m}.rs"))).unwrap();
        // Only the module's own code: its unit tests may use anything.
        let code: String = text
            .split("#[cfg(test)]")
            .next()
            .unwrap_or("")
            .lines()
            .filter(|l| !l.trim_start().starts_with("//"))
            .collect::<Vec<_>>()
            .join("\n");
        let deps: Vec<String> =
            mods.iter().filter(|d| *d != m && code.contains(&format!("crate::{d}"))).cloned().collect();
        graph.insert(m.clone(), deps);
    }
    graph
}

/// A cycle through `from`, as a path, if there is one.
fn cycle(graph: &BTreeMap<String, Vec<String>>, from: &str) -> Option<Vec<String>> {
    fn walk(g: &BTreeMap<String, Vec<String>>, at: &str, target: &str, path: &mut Vec<String>) -> bool {
        for d in &g[at] {
            if d == target {
                path.push(d.clone());
                return true;
            }
            if !path.contains(d) {
                path.push(d.clone());
                if walk(g, d, target, path) {
                    return true;
                }
                path.pop();
            }
        }
        false
    }
    let mut path = vec![from.to_string()];
    walk(graph, from, from, &mut path).then_some(path)
}

#[test]
fn host_modules_have_no_import_cycle() {
    let graph = module_graph();
    assert!(graph.contains_key("setup") && graph.contains_key("qemu") && graph.contains_key("kbuild"));
    for m in graph.keys() {
        if let Some(c) = cycle(&graph, m) {
            panic!("import cycle: {}", c.join(" → "));
        }
    }
    // The start-up chain: setup is a leaf, kbuild needs only setup.
    assert!(graph["setup"].is_empty(), "setup uses {:?}", graph["setup"]);
    assert_eq!(graph["kbuild"], ["setup"]);
}
