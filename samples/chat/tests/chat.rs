//! The chat sample end to end, started the way a user starts it: `chat-server` (a node),
//! `chat-gate` (a gate serving the web client) and clients, each its own process.

use std::time::Duration;

use goverse_proto::gate::gate_service_client::GateServiceClient;
use goverse_proto::gate::{CallObjectRequest, Empty};
use goverse_sample_chat::proto::{
    ChatRoomGetRecentMessagesRequest, ChatRoomGetRecentMessagesResponse, ChatRoomJoinRequest,
    ChatRoomJoinResponse, ChatRoomSendChatMessageRequest, ClientNewMessageNotification,
};
use goverse_testkit::{Browser, Process};
use prost::{Message, Name};

/// A node and a gate, as separate processes on free loopback ports.
struct Cluster {
    // Fields drop in order: the gate goes first, so it does not log the node going away.
    _gate: Process,
    _server: Process,
    grpc: String,
    http: String,
}

fn address_after<'a>(line: &'a str, marker: &str) -> &'a str {
    let rest = &line[line.find(marker).expect("marker") + marker.len()..];
    rest.split([' ', ',', '/']).next().expect("address")
}

impl Cluster {
    fn start() -> Self {
        let mut server = Process::start(
            env!("CARGO_BIN_EXE_chat-server"),
            ["--listen", "127.0.0.1:0"],
        );
        let line = server.expect("node service on ");
        let node = address_after(&line, "node service on ").trim_end_matches(';');
        let mut gate = Process::start(
            env!("CARGO_BIN_EXE_chat-gate"),
            [
                "--node",
                node,
                "--listen",
                "127.0.0.1:0",
                "--http-listen",
                "127.0.0.1:0",
            ],
        );
        let line = gate.expect("chat-gate: gRPC ");
        let grpc = address_after(&line, "gRPC ").to_owned();
        let http = address_after(&line, "http://").to_owned();
        Self {
            _server: server,
            _gate: gate,
            grpc,
            http,
        }
    }

    fn client(&self, name: &str) -> Process {
        let mut client = Process::start(
            env!("CARGO_BIN_EXE_chat-client"),
            ["--gate", self.grpc.as_str(), "--name", name],
        );
        client.expect("connected to");
        client
    }
}

#[test]
fn two_terminal_clients_chat_by_push() {
    let cluster = Cluster::start();
    let mut alice = cluster.client("alice");
    let mut bob = cluster.client("bob");

    alice.send("/list");
    alice.expect("rooms: Crypto, General, Movies, Sports, Technology");
    alice.send("/join General");
    alice.expect("joined General as alice");
    alice.expect("* alice joined");
    bob.send("/join General");
    bob.expect("joined General as bob");
    bob.expect("* alice joined"); // history
    alice.expect("* bob joined"); // push

    bob.send("hello from bob");
    alice.expect("bob: hello from bob");
    alice.send("hi bob");
    bob.expect("alice: hi bob");

    // A room made by joining it shows up in the list (the room registers with the manager).
    bob.send("/join Rust-talk");
    bob.expect("left General");
    bob.expect("joined Rust-talk as bob");
    alice.expect("* bob left");
    alice.send("/list");
    alice.expect("rooms: Crypto, General, Movies, Rust-talk, Sports, Technology");

    // Messages in a room alice is not in do not reach her; her own room's history does.
    bob.send("only in rust");
    bob.expect("bob: only in rust");
    alice.send("/messages");
    alice.expect("bob: hello from bob");
    alice.expect("alice: hi bob");
    alice.send("still here");
    alice.expect("alice: still here");
    assert!(
        !alice.output().iter().any(|l| l.contains("only in rust")),
        "{:?}",
        alice.output()
    );

    // Bad input is answered, and the client goes on.
    bob.send("/join no/such room");
    bob.expect("! invalid room name \"no/such room\"");
    bob.send("/frobnicate");
    bob.expect("unknown command /frobnicate");

    alice.send("/quit");
    alice.expect("left General");
    assert_eq!(alice.wait_exit(Duration::from_secs(10)), Some(0));
    bob.close_stdin();
    bob.expect("bye");
    assert_eq!(bob.wait_exit(Duration::from_secs(10)), Some(0));
}

/// A raw gate client over gRPC: the Register stream (unless anonymous) plus calls on the same
/// connection.
struct RawClient {
    gate: GateServiceClient<tonic::transport::Channel>,
    client_id: String,
    pushes: Option<tonic::Streaming<prost_types::Any>>,
}

impl RawClient {
    async fn connect(grpc: &str, register: bool) -> Self {
        let mut gate = GateServiceClient::connect(format!("http://{grpc}"))
            .await
            .unwrap();
        if !register {
            return Self {
                gate,
                client_id: String::new(),
                pushes: None,
            };
        }
        let mut pushes = gate.register(Empty {}).await.unwrap().into_inner();
        let first = pushes.message().await.unwrap().unwrap();
        let registered =
            goverse_proto::gate::RegisterResponse::decode(first.value.as_slice()).unwrap();
        Self {
            gate,
            client_id: registered.client_id,
            pushes: Some(pushes),
        }
    }

    async fn call<Req: Message + Name, Resp: Message + Default>(
        &mut self,
        client_id: &str,
        room: &str,
        method: &str,
        request: &Req,
    ) -> Result<Resp, tonic::Status> {
        let response = self
            .gate
            .call_object(CallObjectRequest {
                client_id: client_id.to_owned(),
                r#type: "ChatRoom".to_owned(),
                id: goverse_sample_chat::room_id(room),
                method: method.to_owned(),
                request: Some(prost_types::Any {
                    type_url: Req::type_url(),
                    value: request.encode_to_vec(),
                }),
            })
            .await?
            .into_inner();
        Ok(Resp::decode(response.response.unwrap().value.as_slice()).unwrap())
    }

    async fn next_message(&mut self) -> ClientNewMessageNotification {
        let pushes = self.pushes.as_mut().expect("a registered client");
        let any = tokio::time::timeout(Duration::from_secs(10), pushes.message())
            .await
            .expect("a push within 10 s")
            .unwrap()
            .unwrap();
        assert_eq!(any.type_url, ClientNewMessageNotification::type_url());
        ClientNewMessageNotification::decode(any.value.as_slice()).unwrap()
    }
}

#[tokio::test]
async fn membership_comes_from_the_connection_and_history_pages_by_timestamp() {
    let cluster = Cluster::start();
    let mut alice = RawClient::connect(&cluster.grpc, true).await;
    let mut mallory = RawClient::connect(&cluster.grpc, true).await;
    let mut anonymous = RawClient::connect(&cluster.grpc, false).await;

    // Calls without a registered client, or as someone else's client, are refused.
    let join = ChatRoomJoinRequest {
        user_name: "alice".to_owned(),
        client_id: String::new(),
    };
    let err = anonymous
        .call::<_, ChatRoomJoinResponse>("", "Lobby", "Join", &join)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    let alice_id = alice.client_id.clone();
    let err = mallory
        .call::<_, ChatRoomJoinResponse>(&alice_id, "Lobby", "Join", &join)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    let joined: ChatRoomJoinResponse = alice.call(&alice_id, "Lobby", "Join", &join).await.unwrap();
    assert_eq!(joined.room_name, "Lobby");
    assert!(joined.recent_messages.is_empty());
    assert_eq!(
        alice.next_message().await.message.unwrap().message,
        "alice joined"
    );

    // A non-member cannot post, whatever name it writes into the request.
    let mallory_id = mallory.client_id.clone();
    let post = |text: &str| ChatRoomSendChatMessageRequest {
        user_name: "alice".to_owned(),
        message: text.to_owned(),
    };
    let err = mallory
        .call::<_, goverse_sample_chat::proto::ClientSendChatMessageResponse>(
            &mallory_id,
            "Lobby",
            "SendMessage",
            &post("spoofed"),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");

    let mut stamps = Vec::new();
    for i in 0..5 {
        let _: goverse_sample_chat::proto::ClientSendChatMessageResponse = alice
            .call(&alice_id, "Lobby", "SendMessage", &post(&format!("m{i}")))
            .await
            .unwrap();
        let pushed = alice.next_message().await;
        assert_eq!(pushed.room_name, "Lobby");
        let message = pushed.message.unwrap();
        assert_eq!(message.user_name, "alice");
        assert_eq!(message.message, format!("m{i}"));
        stamps.push(message.timestamp);
    }
    assert!(stamps.windows(2).all(|w| w[0] < w[1]), "{stamps:?}");

    // Everything after m1's timestamp, oldest first; and a limit keeps the newest.
    let page: ChatRoomGetRecentMessagesResponse = alice
        .call(
            &alice_id,
            "Lobby",
            "GetRecentMessages",
            &ChatRoomGetRecentMessagesRequest {
                after_timestamp: stamps[1],
                limit: 0,
            },
        )
        .await
        .unwrap();
    let texts: Vec<_> = page.messages.iter().map(|m| m.message.as_str()).collect();
    assert_eq!(texts, ["m2", "m3", "m4"]);
    let page: ChatRoomGetRecentMessagesResponse = alice
        .call(
            &alice_id,
            "Lobby",
            "GetRecentMessages",
            &ChatRoomGetRecentMessagesRequest {
                after_timestamp: 0,
                limit: 2,
            },
        )
        .await
        .unwrap();
    let texts: Vec<_> = page.messages.iter().map(|m| m.message.as_str()).collect();
    assert_eq!(texts, ["m3", "m4"]);

    // Bad input: empty and oversized messages, names and room IDs.
    for (request, want) in [
        (post("   "), "the message is empty"),
        (post(&"x".repeat(2001)), "longer than 2000"),
    ] {
        let err = alice
            .call::<_, goverse_sample_chat::proto::ClientSendChatMessageResponse>(
                &alice_id,
                "Lobby",
                "SendMessage",
                &request,
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains(want), "{err:?}");
    }
    for (room, name, want) in [
        ("Lobby", "", "a user name is required"),
        ("Lobby", "system", "reserved"),
        ("bad*room", "alice", "invalid room name"),
    ] {
        let err = alice
            .call::<_, ChatRoomJoinResponse>(
                &alice_id,
                room,
                "Join",
                &ChatRoomJoinRequest {
                    user_name: name.to_owned(),
                    client_id: String::new(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(err.message().contains(want), "{err:?}");
    }
}

#[tokio::test]
async fn web_client_in_headless_chromium_chats_with_a_terminal_client() {
    use fantoccini::Locator;
    let cluster = Cluster::start();
    let browser = Browser::start().await;
    let page = &browser.client;
    page.goto(&format!("http://{}/chat/", cluster.http))
        .await
        .unwrap();
    browser.wait_text("#status", "connected as").await;
    browser.wait_text("#rooms", "General").await;

    browser.type_into("#name", "carol").await;
    browser.click("#rooms button[data-room=General]").await;
    browser.wait_text("#room-title", "General").await;
    browser.wait_text("#messages", "carol joined").await;

    // A terminal client joins; the page learns it by push.
    let mut dave = cluster.client("dave");
    dave.send("/join General");
    dave.expect("* carol joined");
    browser.wait_text("#messages", "dave joined").await;

    dave.send("hello from the terminal");
    browser
        .wait_text("#messages", "dave:hello from the terminal")
        .await;

    browser.type_into("#input", "hello from the browser").await;
    browser.click("#send").await;
    dave.expect("carol: hello from the browser");
    browser
        .wait_text("#messages li.mine", "carol:hello from the browser")
        .await;

    // The page renders text, never markup.
    dave.send("<img src=x onerror=alert(1)>");
    browser
        .wait_text("#messages", "<img src=x onerror=alert(1)>")
        .await;
    let images = page.find_all(Locator::Css("#messages img")).await.unwrap();
    assert!(images.is_empty());

    browser.click("#leave").await;
    dave.expect("* carol left");
    browser.client.clone().close().await.unwrap();
}
