//! The shipped example configs and the README's config snippets stay valid.

mod common;

use portcullis::compile::{load_and_compile_str, CompileEnv};
use portcullis::upstream::Pools;
use std::path::{Path, PathBuf};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("examples/ exists")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// Every example compiles with no environment at all: each `${VAR}` must have a default.
#[test]
fn every_example_compiles_with_its_defaults() {
    let files = examples();
    assert!(
        files.iter().any(|f| f.ends_with("quickstart.yaml")),
        "{files:?}"
    );
    let pools = Pools::default();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let gw = load_and_compile_str(
            &f.display().to_string(),
            &text,
            &|_| None,
            &CompileEnv::for_file(f, &pools),
        )
        .unwrap_or_else(|d| panic!("{} does not compile:\n{d}", f.display()));
        assert!(!gw.routes.is_empty(), "{}", f.display());
        // Every named route shows in the route table.
        let table = gw.route_table();
        for r in &gw.routes {
            assert!(table.contains(&*r.name), "{} missing from\n{table}", r.name);
        }
    }
}

/// With the variables set, the values are used (the defaults are not hard-wired).
#[test]
fn examples_take_their_variables_from_the_environment() {
    let pools = Pools::default();
    for f in examples() {
        let text = std::fs::read_to_string(&f).unwrap();
        if !text.contains("${PORTCULLIS_BIND") {
            continue;
        }
        let env = |k: &str| (k == "PORTCULLIS_BIND").then(|| "127.0.0.1:18080".to_owned());
        let gw = load_and_compile_str(
            &f.display().to_string(),
            &text,
            &env,
            &CompileEnv::for_file(&f, &pools),
        )
        .unwrap_or_else(|d| panic!("{}:\n{d}", f.display()));
        assert!(
            gw.listeners
                .iter()
                .any(|l| l.addr == "127.0.0.1:18080".parse().unwrap()),
            "{}",
            f.display()
        );
    }
}

#[test]
fn the_demo_runs_the_shipped_quickstart() {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quickstart.yaml"),
    )
    .unwrap();
    assert_eq!(portcullis::demo::QUICKSTART, shipped);
    let pools = Pools::default();
    let env = |k: &str| match k {
        "PORTCULLIS_DEMO_UPSTREAM" => Some("127.0.0.1:1".to_owned()),
        "PORTCULLIS_BIND" => Some("127.0.0.1:0".to_owned()),
        _ => None,
    };
    let gw = load_and_compile_str(
        "quickstart.yaml",
        portcullis::demo::QUICKSTART,
        &env,
        &CompileEnv {
            base_dir: ".".into(),
            pools: &pools,
        },
    )
    .unwrap_or_else(|d| panic!("{d}"));
    let names: Vec<&str> = gw.routes.iter().map(|r| &*r.name).collect();
    for n in ["hello", "echo"] {
        assert!(names.contains(&n), "{names:?}");
    }
    assert_eq!(
        gw.upstreams["echo"].targets().targets[0]
            .target
            .authority
            .as_str(),
        "127.0.0.1:1"
    );
}

/// `portcullis validate` agrees about every example.
#[test]
fn validate_accepts_every_example() {
    for f in examples() {
        let (code, out, err) = common::process::run_cli(&["validate", "-c", f.to_str().unwrap()]);
        assert_eq!(code, 0, "{}:\n{out}\n{err}", f.display());
        assert!(out.contains(": ok ("), "{out}");
    }
}

/// The README's `yaml` blocks use only real keys and valid values. They are fragments (and
/// point at certificates that do not exist), so they are only loaded, not compiled; a block
/// that is a list of routes is loaded under `routes:`.
#[test]
fn readme_config_snippets_load() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut blocks = Vec::new();
    let mut lines = readme.lines().enumerate();
    while let Some((n, l)) = lines.next() {
        if l.trim() == "```yaml" {
            let body: Vec<&str> = lines
                .by_ref()
                .map(|(_, l)| l)
                .take_while(|l| l.trim() != "```")
                .collect();
            blocks.push((n + 1, body.join("\n") + "\n"));
        }
    }
    assert!(blocks.len() >= 3, "found {} yaml blocks", blocks.len());
    for (line, block) in blocks {
        let text = if block.trim_start().starts_with("- ") {
            format!("routes:\n{block}")
        } else {
            block.clone()
        };
        let (_, diags) =
            portcullis::config::load_str_partial("README.md", &text, &|_| Some("x".to_owned()));
        let real: Vec<_> = diags
            .iter()
            .filter(|d| !d.message.contains("missing section `routes`"))
            .collect();
        assert!(
            real.is_empty(),
            "README.md yaml block at line {line}:\n{block}\n{real:#?}"
        );
    }
}
