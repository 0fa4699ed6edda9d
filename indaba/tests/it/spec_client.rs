//! The spec's own `ChatWebSocket` class and `useChatWebSocket` hook, unmodified but for the
//! URL (and, for the hook, module syntax and a minimal React stand-in), run in Node with the
//! `ws` package as `WebSocket` against a gateway over real NATS and PostgreSQL.

use std::path::PathBuf;
use std::process::Stdio;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_specs_javascript_client_works_unchanged() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/spec-client");
    assert!(
        dir.join("node_modules/ws").exists(),
        "run `npm install` in {} (scripts/test.sh does)",
        dir.display()
    );
    let c = TestCluster::builder().build().await;
    let gw = c.gw(0);
    let out = tokio::process::Command::new("node")
        .current_dir(&dir)
        .arg("spec_test.js")
        .arg(format!("ws://{gw}"))
        .args([
            token(11),
            "11".into(),
            token(12),
            "12".into(),
            token(13),
            "13".into(),
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), out)
        .await
        .expect("node finished")
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "spec client failed:\n{stderr}\n{stdout}"
    );
    assert!(stdout.contains(r#""ok":true"#), "{stdout}");
}
