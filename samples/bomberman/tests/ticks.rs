//! Fifty matches running at once on one node keep their 10 Hz tick (±10 %), measured over five
//! seconds of real time.

use std::time::{Duration, Instant};

use goverse::prelude::*;
use goverse_sample_bomberman::proto::{AddPlayerRequest, GetSnapshotRequest, StartMatchRequest};
use goverse_sample_bomberman::{MatchRef, register};

const MATCHES: usize = 50;

async fn ticks(node: &Node, matches: &[MatchRef]) -> Vec<i32> {
    let mut ticks = Vec::with_capacity(matches.len());
    for game in matches {
        let snapshot = game
            .get_snapshot(node, GetSnapshotRequest {})
            .await
            .unwrap()
            .snapshot
            .unwrap();
        ticks.push(snapshot.tick);
    }
    ticks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_matches_tick_at_ten_hertz() {
    let node = register(Node::builder(NodeConfig::default()))
        .object_store(std::sync::Arc::new(goverse::persistence::MemoryStore::new()))
        .start()
        .await
        .unwrap();
    let matches: Vec<MatchRef> = (0..MATCHES)
        .map(|i| MatchRef::new(format!("Match-load-{i}")))
        .collect();
    for game in &matches {
        for (player, (x, y)) in [("p1", (1, 1)), ("p2", (11, 9))] {
            let added = game
                .add_player(
                    &node,
                    AddPlayerRequest {
                        player_id: player.to_owned(),
                        spawn_x: x,
                        spawn_y: y,
                        client_id: String::new(),
                    },
                )
                .await
                .unwrap();
            assert!(added.ok, "{}", added.reason);
        }
        assert!(
            game.start_match(&node, StartMatchRequest {})
                .await
                .unwrap()
                .ok
        );
    }
    // Settle, then measure.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (before, started) = (ticks(&node, &matches).await, Instant::now());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (after, elapsed) = (ticks(&node, &matches).await, started.elapsed());
    let mut rates: Vec<f64> = before
        .iter()
        .zip(&after)
        .map(|(b, a)| f64::from(a - b) / elapsed.as_secs_f64())
        .collect();
    rates.sort_by(f64::total_cmp);
    let (slowest, fastest) = (rates[0], rates[rates.len() - 1]);
    println!("{MATCHES} matches: {slowest:.2} Hz to {fastest:.2} Hz over {elapsed:?}");
    assert!(
        slowest >= 9.0 && fastest <= 11.0,
        "ticks between {slowest:.2} Hz and {fastest:.2} Hz"
    );
    node.shutdown(Duration::from_secs(5)).await;
}
