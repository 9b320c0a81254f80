use portcullis::compile::{compile, CompileEnv};
use portcullis::upstream::Pools;
fn show(name: &str, y: &str) {
    let env = |k: &str| {
        if k == "SETVAR" {
            Some("127.0.0.1:7".to_string())
        } else {
            None
        }
    };
    match portcullis::config::load_str("t.yaml", y, &env) {
        Err(d) => println!("== {name} (load)\n{d}{:?}", d.0),
        Ok(l) => {
            let pools = Pools::default();
            match compile(
                &l,
                &CompileEnv {
                    base_dir: ".".into(),
                    pools: &pools,
                },
            ) {
                Err(d) => println!("== {name} (compile)\n{d}"),
                Ok(g) => println!("== {name} OK\n{}", g.route_table()),
            }
        }
    }
}
#[test]
fn scratch() {
    let up = "upstreams:\n  users: { targets: [ { url: http://127.0.0.1:1 } ] }\n  orders: { targets: [ { url: http://127.0.0.1:2 } ] }\n";
    show(
        "unknown field",
        &format!("{up}routes:\n  - name: a\n    match: {{ path: /a }}\n    upstreem: users\n"),
    );
    show(
        "unknown section",
        &format!("{up}rotes: []\nroutes:\n  - match: {{ path: /a }}\n    upstream: users\n"),
    );
    show("bad duration", &format!("{up}defaults:\n  timeouts:\n    request: 10\nroutes:\n  - match: {{ path: /a }}\n    upstream: users\n"));
    show(
        "bad size",
        &format!(
            "{up}routes:\n  - match: {{ path: /a }}\n    upstream: users\n    max_body: 10XB\n"
        ),
    );
    show(
        "unknown upstream",
        &format!("{up}routes:\n  - match: {{ path: /a }}\n    upstream: userz\n"),
    );
    show(
        "bad template",
        &format!("{up}routes:\n  - match: {{ path: \"/users/{{id\" }}\n    upstream: users\n"),
    );
    show("missing var", &format!("{up}listeners:\n  - bind: ${{NOPE_VAR}}\nroutes:\n  - match: {{ path: /a }}\n    upstream: users\n"));
    show(
        "yaml",
        "routes:\n  - match: { path: /a\n    upstream: users\n",
    );
    show("yaml2", "routes:\n  - name: a\n   bad: indent\n");
    show("dup", &format!("{up}routes:\n  - name: a\n    match: {{ path: /a }}\n    upstream: users\n  - name: a\n    match: {{ path: /b }}\n    upstream: users\n"));
    show("both", &format!("{up}routes:\n  - match: {{ path: /a }}\n    upstream: users\n    respond: {{ status: 200 }}\n"));
    show("https", "upstreams:\n  s: { targets: [ { url: https://example.com } ] }\nroutes:\n  - match: { path: /a }\n    upstream: s\n");
    show("admin", &format!("{up}admin: {{ bind: 0.0.0.0:9999 }}\nroutes:\n  - match: {{ path: /a }}\n    upstream: users\n"));
    show("many", &format!("{up}defaults:\n  timeouts: {{ request: 10 }}\nroutes:\n  - name: a\n    match: {{ path: /a }}\n    upstreem: users\n  - name: b\n    match: {{ path: /b }}\n    upstream: users\n  - name: c\n    match: {{ path: /c }}\n    upstream: userz\n  - name: d\n    match: {{ path: /d }}\n    upstream: users\n    max_body: lots\n"));
}
