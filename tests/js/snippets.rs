//! The TypeScript snippets of README.md and clients/js/README.md compile
//! against the library's sources, with tsc from clients/js's lockfile.

use crate::common;

use common::node::{client_js_dir, npm_ready, run_node};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The ```ts blocks of a Markdown file.
fn ts_blocks(markdown: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(markdown).expect("read");
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in text.lines() {
        let trimmed = line.trim_start();
        match (&mut current, trimmed) {
            (None, "```ts") => current = Some(Vec::new()),
            (Some(lines), "```") => {
                blocks.push(lines.join("\n"));
                current = None;
            }
            (Some(lines), _) => lines.push(trimmed),
            (None, _) => {}
        }
    }
    blocks
}

#[tokio::test]
async fn the_readmes_typescript_snippets_compile() {
    if !npm_ready(&client_js_dir(), &["typescript", "ws"]).await {
        return;
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ts-snippets");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("mkdir");
    let mut files = Vec::new();
    for (name, markdown) in [
        ("readme", root.join("README.md")),
        ("client", client_js_dir().join("README.md")),
    ] {
        let blocks = ts_blocks(&markdown);
        assert!(
            !blocks.is_empty(),
            "{} has TypeScript snippets",
            markdown.display()
        );
        for (i, block) in blocks.iter().enumerate() {
            // A snippet without its imports gets the library's, and the
            // names a game would have.
            let mut source = String::new();
            if !block.contains("from 'session-proxy-client'") {
                source.push_str("import { Client } from 'session-proxy-client';\n");
                source.push_str("declare const uid: string, username: string, rid: string;\n");
            }
            source.push_str(block);
            source.push_str("\nexport {};\n");
            let file = format!("{name}-{i}.ts");
            std::fs::write(dir.join(&file), source).expect("write");
            files.push(file);
        }
    }
    let tsconfig = serde_json::json!({
        "compilerOptions": {
            "target": "ES2022",
            "module": "ES2022",
            "moduleResolution": "bundler",
            "lib": ["ES2022", "DOM"],
            "strict": true,
            "noEmit": true,
            "skipLibCheck": true,
            "esModuleInterop": true,
            "types": [],
            "paths": {
                "session-proxy-client": [client_js_dir().join("src/index.ts")],
                "ws": [client_js_dir().join("test-support/ws.d.ts")],
            },
        },
        "files": files,
    });
    std::fs::write(dir.join("tsconfig.json"), tsconfig.to_string()).expect("write");
    let tsc = client_js_dir().join("node_modules/typescript/bin/tsc");
    run_node(
        &dir,
        &[tsc.display().to_string(), "-p".into(), ".".into()],
        &[],
        Duration::from_secs(120),
    )
    .await;
}
