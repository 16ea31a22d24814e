//! Retention of console logs and export of job records.

mod common;

use common::*;
use labd::protocol::RequestBody;

async fn log_of(c: &mut labd::client::Client, id: u64) -> Vec<u8> {
    let mut log = Vec::new();
    c.logs(id, false, |d| log.extend_from_slice(d))
        .await
        .unwrap();
    log
}

/// With a cap on the logs' total size, the oldest finished jobs lose their
/// console logs first; their records, events and results stay, and `labd
/// export` writes them all out.
#[test]
fn oldest_logs_are_pruned_to_the_cap_and_records_stay() {
    rt().block_on(async {
        let mut lab = Lab::start(1, &[]);
        let mut c = lab.client().await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let id = submit(
                &mut c,
                &lab.job(
                    &format!("j{i}"),
                    "medium",
                    &["lava-test-case t --shell true"],
                ),
            )
            .await;
            wait_job(&mut c, id).await;
            ids.push(id);
        }
        let mut sizes = Vec::new();
        for &id in &ids {
            sizes.push(log_of(&mut c, id).await.len() as u64);
        }
        drop(c);
        lab.kill_labd();
        // Room for the two newest logs only.
        let mut cfg = std::fs::read_to_string(&lab.config).unwrap();
        cfg.push_str(&format!(
            "[retention]\nmax_log_total_bytes = {}\n",
            sizes[1] + sizes[2]
        ));
        std::fs::write(&lab.config, cfg).unwrap();
        lab.start_labd();
        let mut c = lab.client().await;
        assert!(log_of(&mut c, ids[0]).await.is_empty());
        assert_eq!(log_of(&mut c, ids[1]).await.len() as u64, sizes[1]);
        assert_eq!(log_of(&mut c, ids[2]).await.len() as u64, sizes[2]);
        let j = job(&mut c, ids[0]).await;
        assert_eq!(
            (j["log_pruned"].as_bool(), j["health"].as_str()),
            (Some(true), Some("Complete"))
        );
        assert_eq!(job(&mut c, ids[1]).await["log_pruned"], false);
        let r = c.call(RequestBody::Results { job: ids[0] }).await.unwrap();
        assert_eq!(r["results"][0]["name"], "t");

        drop(c);
        lab.terminate_labd();
        assert!(lab.wait_labd());
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_labd"))
            .args(["export", "--state-dir"])
            .arg(lab.dir.path().join("state"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["job"]["id"], ids[0]);
        assert_eq!(lines[0]["results"][0]["name"], "t");
        assert!(lines[0]["events"].as_array().unwrap().len() > 5);
    });
}
