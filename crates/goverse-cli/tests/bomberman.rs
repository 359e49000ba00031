//! The bomberman sample as players meet it: `goverse demo`, two headless Chromium players at
//! `/bomberman/` matched by the queue, moving, placing a bomb, one winning; the stats recorded
//! once each; and what clients may not call. Then on a cluster of `goverse node` processes: the
//! node of a match killed with kill -9 while it records the results, and each result counted
//! exactly once all the same.

use std::time::Duration;

use futures::StreamExt as _;
use goverse::client::{Client, PushEvent, Pushes};
use goverse_sample_bomberman::proto::{
    GetPlayerStatsRequest, JoinQueueRequest, MatchSnapshot, MatchStatus, PlayerInputRequest,
    PlayerStats, QueueStatusRequest,
};
use goverse_sample_bomberman::{MatchRef, MatchmakingQueueRef, PlayerRef, QUEUE_ID};
use goverse_testkit::{Browser, EtcdServer, Process, ProcessCluster, free_port, python};

mod common;
use common::{GOVERSE, cluster_file};

async fn press(browser: &Browser, key: &str) {
    browser
        .client
        .execute(
            "document.dispatchEvent(new KeyboardEvent('keydown', {key: arguments[0], bubbles: true}));",
            vec![serde_json::json!(key)],
        )
        .await
        .unwrap();
}

async fn post(http: &str, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(format!("http://{http}/api/v1/objects/call/{path}"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_browser_players_are_matched_move_bomb_and_one_wins_with_stats_recorded_once() {
    let ports = [free_port(), free_port(), free_port()].map(|p| format!("127.0.0.1:{p}"));
    let data = tempfile::tempdir().unwrap();
    let mut demo = Process::start(
        GOVERSE,
        [
            "demo",
            "--node-listen",
            &ports[0],
            "--listen",
            &ports[1],
            "--http-listen",
            &ports[2],
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
    );
    demo.expect_within("ready", Duration::from_secs(60));
    let http = ports[2].clone();
    let page = format!("http://{http}/bomberman/");

    let alice = Browser::start().await;
    let bob = Browser::start().await;
    for (browser, name) in [(&alice, "alice"), (&bob, "bob")] {
        browser.client.goto(&page).await.unwrap();
        browser.wait_text("#status", "connected as").await;
        browser.type_into("#name", name).await;
        browser.click("#join").await;
        // The first joins first: alice starts in the top-left corner, bob in the top-right.
        browser.wait_text("#status", "waiting for players").await;
    }
    alice
        .wait_text("#status", "Match-MatchmakingQueue-1: tick")
        .await;
    bob.wait_text("#status", "Match-MatchmakingQueue-1: tick")
        .await;
    alice.wait_text("#players", "alice (1,1)").await;
    alice.wait_text("#players", "bob (11,1)").await;

    // Moves show on both pages.
    press(&bob, "ArrowDown").await;
    bob.wait_text("#players", "bob (11,2)").await;
    alice.wait_text("#players", "bob (11,2)").await;
    press(&alice, "ArrowRight").await;
    alice.wait_text("#players", "alice (2,1)").await;

    // Only alice's client steers alice: a call from another (here an unregistered one) is
    // refused.
    let (status, answer) = post(
        &http,
        "Match/Match-MatchmakingQueue-1/HandleInput",
        serde_json::json!({"playerId": "alice", "move": "DIR_LEFT"}),
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    // Clients may not add players, start matches or record results.
    let (status, _) = post(
        &http,
        "Match/Match-MatchmakingQueue-1/AddPlayer",
        serde_json::json!({"playerId": "mallory", "spawnX": 1, "spawnY": 9}),
    )
    .await;
    assert_eq!(status, 403);
    let (status, _) = post(
        &http,
        "Player/Player-mallory/RecordMatchResult",
        serde_json::json!({"matchId": "m", "won": true}),
    )
    .await;
    assert_eq!(status, 403);

    // Alice drops a bomb and stays on it: two seconds later the blast takes her; bob wins.
    press(&alice, " ").await;
    alice.wait_text("#status", "bob wins").await;
    bob.wait_text("#status", "You win!").await;
    alice.wait_text("#players", "alice (2,1) out").await;
    bob.wait_text("#stats", "bob: 1 wins, 0 losses in 1 matches")
        .await;
    alice
        .wait_text("#stats", "alice: 0 wins, 1 losses in 1 matches")
        .await;

    // Recorded once: the queue has heard, and the stats stay as they are.
    let mut open = i64::MAX;
    for _ in 0..100 {
        let (_, answer) = post(
            &http,
            "MatchmakingQueue/MatchmakingQueue/QueueStatus",
            serde_json::json!({}),
        )
        .await;
        open = answer["matchesOpen"].as_i64().unwrap_or(0);
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(open, 0);
    let (_, answer) = post(&http, "Player/Player-bob/GetStats", serde_json::json!({})).await;
    assert_eq!(answer["stats"]["wins"], serde_json::json!("1"), "{answer}");
    assert_eq!(
        answer["stats"]["totalMatches"],
        serde_json::json!("1"),
        "{answer}"
    );

    alice.client.clone().close().await.unwrap();
    bob.client.clone().close().await.unwrap();
    demo.terminate();
    assert_eq!(demo.wait_exit(Duration::from_secs(30)), Some(0));
}

/// The next snapshot pushed to `pushes` that satisfies `want`, within 20 s.
async fn snapshot_where(
    pushes: &mut Pushes,
    want: impl Fn(&MatchSnapshot) -> bool,
) -> MatchSnapshot {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let event = tokio::time::timeout_at(deadline, pushes.next())
            .await
            .expect("a snapshot within 20 s")
            .expect("the push stream goes on");
        if let Some(Ok(snapshot)) = event.decode::<MatchSnapshot>()
            && want(&snapshot)
        {
            return snapshot;
        }
    }
}

async fn stats(client: &Client, player: &str) -> Option<PlayerStats> {
    PlayerRef::new(format!("Player-{player}"))
        .get_stats(client, GetPlayerStatsRequest {})
        .await
        .ok()
        .and_then(|answer| answer.stats)
}

/// The node (its ID in the file) that owns the shard of `object_id`, as `cluster status` says.
fn owner_of(config: &str, object_id: &str) -> String {
    let shard = goverse::fnv1a_32(object_id.as_bytes()) % 16;
    let out = std::process::Command::new(GOVERSE)
        .args(["cluster", "status", "--json", "--config", config])
        .args(["--shard", &shard.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let address = status["shard_records"][0]["current"]
        .as_str()
        .expect("the shard has an owner")
        .to_owned();
    let file = goverse::config::ClusterFile::load(std::path::Path::new(config)).unwrap();
    file.nodes
        .iter()
        .find(|n| n.grpc_addr == address)
        .map(|n| n.id.clone())
        .unwrap_or_else(|| panic!("no node of the file is at {address}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_counted_once_when_the_match_s_node_is_killed_while_recording() {
    let etcd = EtcdServer::start();
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_file(dir.path(), &etcd, 2, 1);
    // Each result waits 1.5 s before it is recorded: the window for the kill.
    let mut cluster =
        ProcessCluster::new(GOVERSE, &config).env("BOMBERMAN_RECORD_PAUSE_MS", "1500");
    cluster.start_node("node-1");
    cluster.start_node("node-2");
    let gate = cluster.start_gate("gate-1");

    let alice = Client::builder([gate.clone()]).build();
    let bob = Client::builder([gate.clone()]).build();
    let mut alice_pushes = alice.register().await.unwrap();
    let mut bob_pushes = bob.register().await.unwrap();
    for pushes in [&mut alice_pushes, &mut bob_pushes] {
        assert!(matches!(
            pushes.next().await,
            Some(PushEvent::Connected { .. })
        ));
    }
    let queue = MatchmakingQueueRef::new(QUEUE_ID);
    for (client, player) in [(&alice, "alice"), (&bob, "bob")] {
        let mut joined = false;
        for _ in 0..100 {
            let request = JoinQueueRequest {
                player_id: player.to_owned(),
                client_id: String::new(),
            };
            if queue.join_queue(client, request).await.is_ok_and(|a| a.ok) {
                joined = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(joined, "{player} joined: {}", cluster.tails(20));
    }
    let running = snapshot_where(&mut alice_pushes, |s| {
        s.status == MatchStatus::Running as i32
    })
    .await;
    let match_id = running.match_id.clone();

    // Alice stays on her bomb; bob wins.
    MatchRef::new(match_id.as_str())
        .handle_input(
            &alice,
            PlayerInputRequest {
                player_id: "alice".to_owned(),
                r#move: 0,
                place_bomb: true,
            },
        )
        .await
        .unwrap();
    let ended = snapshot_where(&mut bob_pushes, |s| s.status == MatchStatus::Ended as i32).await;
    assert_eq!(ended.winner_id, "bob");

    // Alice's result is recorded first (players in order), bob's 1.5 s later: kill the match's
    // node in between.
    let victim = owner_of(&config, &match_id);
    let mut alice_counted = false;
    for _ in 0..200 {
        if stats(&bob, "alice")
            .await
            .is_some_and(|s| s.total_matches == 1)
        {
            alice_counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(alice_counted);
    assert_eq!(
        stats(&bob, "bob").await.map_or(0, |s| s.total_matches),
        0,
        "killed in time"
    );
    cluster.kill_node(&victim);

    // The surviving node serves the match next; the queue's nudge makes it record again with
    // the same call ids: bob's result lands, alice's is not counted twice.
    let mut done = false;
    for _ in 0..300 {
        let counted = stats(&bob, "bob")
            .await
            .is_some_and(|s| s.total_matches == 1);
        let status = queue.queue_status(&bob, QueueStatusRequest {}).await;
        if counted && status.is_ok_and(|s| s.matches_open == 0) {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(done, "recorded after the kill: {}", cluster.tails(30));
    // And they stay that way.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (a, b) = (
        stats(&bob, "alice").await.unwrap(),
        stats(&bob, "bob").await.unwrap(),
    );
    assert_eq!((a.total_matches, a.wins, a.losses), (1, 0, 1), "{a:?}");
    assert_eq!((b.total_matches, b.wins, b.losses), (1, 1, 0), "{b:?}");
    assert_eq!(
        (a.last_match_id.as_str(), b.last_match_id.as_str()),
        (match_id.as_str(), match_id.as_str())
    );

    drop((alice_pushes, bob_pushes));
    cluster.stop(Duration::from_secs(20));
}

/// Upstream's stress client's cycle through the official Python gRPC stack: eight registered
/// clients join the queue again and again, matches end on a short time limit (upstream's
/// `BOMBERMAN_MATCH_TIME_LIMIT_TICKS`), and every cycle counts exactly one match.
#[test]
fn python_grpc_clients_cycle_through_matches_each_counted_once() {
    let ports = [free_port(), free_port(), free_port()].map(|p| format!("127.0.0.1:{p}"));
    let data = tempfile::tempdir().unwrap();
    let mut demo = Process::start_with_env(
        GOVERSE,
        [
            "demo",
            "--node-listen",
            &ports[0],
            "--listen",
            &ports[1],
            "--http-listen",
            &ports[2],
            "--data-dir",
            data.path().to_str().unwrap(),
        ],
        &[("BOMBERMAN_MATCH_TIME_LIMIT_TICKS".into(), "15".into())],
    );
    demo.expect_within("ready", Duration::from_secs(60));
    let script = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../samples/bomberman/python/stress.py");
    let mut stress = Process::start(
        python(),
        [
            script.to_str().unwrap(),
            "--gate",
            &ports[1],
            "--clients",
            "8",
            "--duration",
            "12",
        ],
    );
    let line = stress.expect_within("ok: ", Duration::from_secs(120));
    let cycles: u32 = line
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(cycles >= 16, "{line}");
    assert_eq!(stress.wait_exit(Duration::from_secs(30)), Some(0));
    demo.terminate();
    assert_eq!(demo.wait_exit(Duration::from_secs(30)), Some(0));
}
