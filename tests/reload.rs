//! Live reload: boards added, a busy board removed after its job, a bad
//! config refused with the running one kept, and SIGHUP.

mod common;

use common::*;
use labd::protocol::RequestBody;

/// The config without the `[[boards]]` entry of `board`.
fn without_board(cfg: &str, board: &str) -> String {
    cfg.split("[[boards]]")
        .enumerate()
        .filter(|(i, part)| *i == 0 || !part.contains(&format!("name = \"{board}\"")))
        .map(|(i, part)| {
            if i == 0 {
                part.to_owned()
            } else {
                format!("[[boards]]{part}")
            }
        })
        .collect()
}

async fn board_names(c: &mut labd::client::Client) -> Vec<String> {
    boards(c)
        .await
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn reload_adds_boards_removes_a_busy_one_after_its_job_and_refuses_bad_configs() {
    rt().block_on(async {
        let mut lab = Lab::prepare(3, &[("sim-02", &["b"]), ("sim-03", &["c"])], &[], "");
        let all = std::fs::read_to_string(&lab.config).unwrap();
        std::fs::write(&lab.config, without_board(&all, "sim-03")).unwrap();
        lab.start_labd();
        let mut c = lab.client().await;
        assert_eq!(board_names(&mut c).await, ["sim-01", "sim-02"]);

        let release = lab.dir.path().join("release");
        let step = format!(
            "echo waiting; while [ ! -e {} ]; do sleep 0.1; done",
            release.display()
        );
        let busy = submit(&mut c, &tagged(lab.job("busy", "medium", &[&step]), "b")).await;
        until_log_contains(&lab, busy, "waiting\r\n").await;

        // sim-03 in, sim-02 out.
        std::fs::write(&lab.config, without_board(&all, "sim-02")).unwrap();
        let v = c.call(RequestBody::Reload).await.unwrap();
        let changes: Vec<&str> = v["changes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert_eq!(
            changes,
            [
                "board sim-02 will be removed when its job ends",
                "board sim-03 added"
            ]
        );
        assert_eq!(board_names(&mut c).await, ["sim-01", "sim-02", "sim-03"]);
        std::fs::write(&release, b"").unwrap();
        let (end, _) = wait_job(&mut c, busy).await;
        assert_eq!(end["health"], "Complete");
        assert_eq!(board_names(&mut c).await, ["sim-01", "sim-03"]);
        let id = submit(&mut c, &tagged(lab.job("new", "medium", &["true"]), "c")).await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");
        assert_eq!(job(&mut c, id).await["board"], "sim-03");

        // A changed board restarts with its new config (here, while idle).
        let retagged = without_board(&all, "sim-02").replacen(
            "name = \"sim-01\"\ndevice_type = \"sim-uboot\"\ntags = []",
            "name = \"sim-01\"\ndevice_type = \"sim-uboot\"\ntags = [\"fast\"]",
            1,
        );
        assert_ne!(retagged, without_board(&all, "sim-02"));
        std::fs::write(&lab.config, &retagged).unwrap();
        let v = c.call(RequestBody::Reload).await.unwrap();
        assert_eq!(
            v["changes"][0],
            "board sim-01 restarted with its new config"
        );
        assert_eq!(board(&mut c, "sim-01").await["tags"][0], "fast");
        let id = submit(
            &mut c,
            &tagged(lab.job("fast", "medium", &["true"]), "fast"),
        )
        .await;
        let (end, log) = wait_job(&mut c, id).await;
        assert_eq!(end["health"], "Complete", "{log}");

        // A broken file is refused, with where; the lab runs on unchanged.
        std::fs::write(&lab.config, "state_dir = 12\n").unwrap();
        let e = c.call(RequestBody::Reload).await.unwrap_err();
        assert_eq!(e.code(), Some(labd::error::ErrorCode::InvalidConfig));
        assert!(e.to_string().contains("labd.toml:1"), "{e}");
        assert_eq!(board_names(&mut c).await, ["sim-01", "sim-03"]);

        // SIGHUP does the same as `labctl reload`.
        std::fs::write(&lab.config, &all).unwrap();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(lab.labd_pid() as i32),
            nix::sys::signal::Signal::SIGHUP,
        )
        .unwrap();
        lab.wait_log("board sim-02 added");
        assert_eq!(board_names(&mut c).await, ["sim-01", "sim-02", "sim-03"]);
    });
}
