//! The tic-tac-toe sample as a user runs it: `goverse demo` (a SQLite file in a kept data
//! directory), the page at `/tictactoe/` in headless Chromium, and upstream's client wire format
//! (hand-encoded protobuf in the base64 `Any` envelope) on the same HTTP API.

use std::time::Duration;

use base64::Engine as _;
use goverse::prost::Message as _;
use goverse_sample_tictactoe::proto::{GameState, MoveRequest, NewGameRequest};
use goverse_testkit::{Browser, Process, free_port};

const GOVERSE: &str = env!("CARGO_BIN_EXE_goverse");

/// `goverse demo` on these ports and data directory, up.
fn demo(ports: &[String; 3], data: &std::path::Path) -> Process {
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
            data.to_str().unwrap(),
        ],
    );
    demo.expect_within("ready", Duration::from_secs(60));
    demo
}

/// The board as the page shows it: nine "", "X" or "O".
async fn board(browser: &Browser) -> Vec<String> {
    let value = browser
        .client
        .execute(
            "return Array.from(document.querySelectorAll('.cell')).map(c => c.textContent);",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(value).unwrap()
}

const LINES: [[usize; 3]; 8] = [
    [0, 1, 2],
    [3, 4, 5],
    [6, 7, 8],
    [0, 3, 6],
    [1, 4, 7],
    [2, 5, 8],
    [0, 4, 8],
    [2, 4, 6],
];

/// The empty cell completing a line of two `mark`s.
fn completing(board: &[String], mark: &str) -> Option<usize> {
    LINES.iter().find_map(|line| {
        let mine = line.iter().filter(|&&i| board[i] == mark).count();
        let empty = line.iter().copied().find(|&i| board[i].is_empty());
        if mine == 2 { empty } else { None }
    })
}

/// Plays one game from the page with X's preferences `order` (after winning or blocking when
/// it can); returns the status line the page ends with.
async fn play(browser: &Browser, order: [usize; 9]) -> String {
    browser.click("#new-game").await;
    browser.wait_text("#status", "Your turn.").await;
    assert_eq!(board(browser).await, vec![""; 9]);
    loop {
        let cells = board(browser).await;
        let cell = completing(&cells, "X")
            .or_else(|| completing(&cells, "O"))
            .or_else(|| order.into_iter().find(|&i| cells[i].is_empty()))
            .expect("a free cell while playing");
        let marks = cells.iter().filter(|c| !c.is_empty()).count();
        browser.click(&format!(".cell[data-index='{cell}']")).await;
        // The move is in when the board shows X there (and the AI's answer, if any).
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let now = board(browser).await;
            if now[cell] == "X" && now.iter().filter(|c| !c.is_empty()).count() > marks {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the move never showed: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let status = browser.text("#status").await;
        if status != "Your turn." {
            return status;
        }
    }
}

/// Plays games with `order` until one ends with `want`.
async fn play_until(browser: &Browser, order: [usize; 9], want: &str) {
    let mut seen = Vec::new();
    for _ in 0..30 {
        let status = play(browser, order).await;
        if status.contains(want) {
            return;
        }
        seen.push(status);
    }
    panic!("30 games and never {want:?}: {seen:?}");
}

/// An upstream-style call: the request hand-encoded into a base64 `Any` in `{"request": …}`.
async fn envelope_call(
    http: &str,
    service: &str,
    method: &str,
    type_name: &str,
    bytes: Vec<u8>,
) -> (u16, serde_json::Value) {
    let any = prost_types::Any {
        type_url: format!("type.googleapis.com/{type_name}"),
        value: bytes,
    };
    let body = serde_json::json!({
        "request": base64::engine::general_purpose::STANDARD.encode(any.encode_to_vec())
    });
    // Upstream's test client names itself with an id it made up; it proves nothing, and the
    // call goes through for nobody in particular.
    let response = reqwest::Client::new()
        .post(format!(
            "http://{http}/api/v1/objects/call/TicTacToeService/{service}/{method}"
        ))
        .header("X-Client-ID", "client-3f2a9c1d7b4e")
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// Upstream's `MakeMove` of `game` at `position` on `service-4`, in the envelope.
async fn envelope_move(http: &str, game: &str, position: i32) -> (u16, serde_json::Value) {
    let request = MoveRequest {
        game_id: game.into(),
        position,
    };
    envelope_call(
        http,
        "service-4",
        "MakeMove",
        "tictactoe.MoveRequest",
        request.encode_to_vec(),
    )
    .await
}

fn game_state(answer: &serde_json::Value) -> GameState {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(answer["response"].as_str().expect("a base64 response"))
        .unwrap();
    let any = prost_types::Any::decode(bytes.as_slice()).unwrap();
    assert_eq!(any.type_url, "type.googleapis.com/tictactoe.GameState");
    GameState::decode(any.value.as_slice()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tictactoe_plays_to_a_win_and_a_draw_refuses_illegal_moves_and_survives_a_restart() {
    let ports = [free_port(), free_port(), free_port()].map(|p| format!("127.0.0.1:{p}"));
    let data = tempfile::tempdir().unwrap();
    let mut server = demo(&ports, data.path());
    let http = ports[2].clone();

    // Upstream's client encodes the messages by hand and sends them in the base64 envelope.
    let (status, answer) = envelope_call(
        &http,
        "service-4",
        "NewGame",
        "tictactoe.NewGameRequest",
        NewGameRequest {
            game_id: "upstream-1".into(),
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let state = game_state(&answer);
    assert_eq!((state.status.as_str(), state.board.len()), ("playing", 9));
    let (status, answer) = envelope_move(&http, "upstream-1", 4).await;
    assert_eq!(status, 200, "{answer}");
    let state = game_state(&answer);
    assert_eq!(state.board[4], "X");
    assert!((0..9).contains(&state.last_ai_move), "{state:?}");
    assert_eq!(state.board[state.last_ai_move as usize], "O");
    // It plays random free cells until the game ends.
    let mut state = state;
    let mut moves = 1;
    while state.status == "playing" {
        let free: Vec<i32> = (0..9)
            .filter(|&i| state.board[i as usize].is_empty())
            .collect();
        let position = free[moves % free.len()];
        let (status, answer) = envelope_move(&http, "upstream-1", position).await;
        assert_eq!(status, 200, "{answer}");
        state = game_state(&answer);
        moves += 1;
        assert!(moves < 10, "{state:?}");
    }
    assert!(
        ["x_wins", "o_wins", "draw"].contains(&state.status.as_str()),
        "{state:?}"
    );
    let (status, answer) = envelope_call(
        &http,
        "service-4",
        "NewGame",
        "tictactoe.NewGameRequest",
        NewGameRequest {
            game_id: "upstream-1".into(),
        }
        .encode_to_vec(),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(game_state(&answer).board, vec![""; 9]);
    let (status, answer) = envelope_move(&http, "upstream-1", 4).await;
    assert_eq!(status, 200, "{answer}");
    // Its error handling reads `error` from a non-2xx answer.
    let (status, answer) = envelope_move(&http, "upstream-1", 4).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("position 4 is taken by X"),
        "{answer}"
    );
    // Only the ten services are open to clients.
    let (status, answer) = envelope_call(
        &http,
        "service-11",
        "GetState",
        "tictactoe.GetStateRequest",
        Vec::new(),
    )
    .await;
    assert_eq!(status, 403, "{answer}");

    // The page: a win, a draw.
    let browser = Browser::start().await;
    let page = format!("http://{http}/tictactoe/");
    browser.client.goto(&page).await.unwrap();
    browser.wait_text("#status", "Your turn.").await;
    play_until(&browser, [0, 8, 6, 2, 4, 1, 3, 5, 7], "You win!").await;
    play_until(&browser, [4, 1, 3, 5, 7, 0, 2, 6, 8], "It's a draw.").await;

    // An illegal move is refused, and the page says why.
    browser.click("#new-game").await;
    browser.wait_text("#status", "Your turn.").await;
    browser.click(".cell[data-index='0']").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while board(&browser).await[0] != "X" {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    browser.click(".cell[data-index='0']").await;
    browser
        .wait_text("#message", "move refused: position 0 is taken by X")
        .await;
    let before = board(&browser).await;
    let game = browser.text("#game-id").await;

    // The node restarts (SIGTERM, then the same data directory): the game is still there.
    server.terminate();
    assert_eq!(server.wait_exit(Duration::from_secs(30)), Some(0));
    let _server = demo(&ports, data.path());
    browser.client.goto(&page).await.unwrap();
    browser.wait_text("#status", "Your turn.").await;
    assert_eq!(browser.text("#game-id").await, game);
    assert_eq!(board(&browser).await, before);
    browser.client.clone().close().await.unwrap();
}
