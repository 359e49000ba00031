//! `chat-client`: the chat sample's terminal client, on `goverse::client`: a push stream and
//! calls on one connection (the gate binds the client's identity to it), moved to another gate
//! when its gate goes away (the room is joined again there, and the client says so).
//!
//! ```text
//! chat-client --gate 127.0.0.1:49000,127.0.0.1:49001 --name alice
//! /list              rooms
//! /join General      join a room (leaving the current one)
//! /messages          the room's recent messages
//! /leave             leave the room
//! /help, /quit
//! anything else      says it in the room
//! ```

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use futures::StreamExt as _;
use goverse::client::{Client, PushEvent};
use goverse_sample_chat::proto::{
    ChatMessage, ChatRoomGetRecentMessagesRequest, ChatRoomJoinRequest, ChatRoomLeaveRequest,
    ChatRoomListRequest, ChatRoomSendChatMessageRequest, ClientNewMessageNotification,
};
use goverse_sample_chat::{
    ChatRoomMgrRef, ChatRoomRef, MGR_ID, SYSTEM_USER, check_room_name, room_id,
};
use tokio::io::{AsyncBufReadExt, BufReader};

/// The chat sample's terminal client.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The gate's gRPC address; several, comma-separated, are tried in turn.
    #[arg(
        long,
        default_value = "127.0.0.1:49000",
        env = "GOVERSE_GATE",
        value_delimiter = ','
    )]
    gate: Vec<String>,
    /// Your display name in rooms.
    #[arg(long, env = "USER", default_value = "guest")]
    name: String,
}

const HELP: &str = "\
commands:
  /list             the rooms
  /join <room>      join a room (leaving the current one); rooms that do not exist yet are made
  /messages         the current room's recent messages
  /leave            leave the current room
  /help             this
  /quit             leave and exit (so does end of input)
anything else is said in the current room";

/// `HH:MM:SS` (UTC) of a timestamp in microseconds.
fn clock(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn show(room: &str, message: &ChatMessage) {
    let time = clock(message.timestamp);
    if message.user_name == SYSTEM_USER {
        println!("[{room} {time}] * {}", message.message);
    } else {
        println!("[{room} {time}] {}: {}", message.user_name, message.message);
    }
}

struct Chat {
    client: Client,
    name: String,
    /// The room joined, and the newest timestamp shown from it (pushes at or before it were
    /// already shown by a Join answer).
    room: Option<(String, i64)>,
}

impl Chat {
    /// Runs one input line; false when the client should exit.
    async fn line(&mut self, line: &str) -> anyhow::Result<bool> {
        let line = line.trim();
        let (command, arg) = line.split_once(' ').unwrap_or((line, ""));
        let arg = arg.trim();
        match command {
            "" => {}
            "/help" => println!("{HELP}"),
            "/quit" => {
                self.leave().await?;
                return Ok(false);
            }
            "/list" => {
                let rooms = ChatRoomMgrRef::new(MGR_ID)
                    .list_chat_rooms(&self.client, ChatRoomListRequest {})
                    .await?;
                println!("rooms: {}", rooms.chat_rooms.join(", "));
            }
            "/join" if arg.is_empty() => println!("usage: /join <room>"),
            "/join" => self.join(arg).await?,
            "/leave" => {
                if self.room.is_none() {
                    println!("not in a room");
                }
                self.leave().await?;
            }
            "/messages" => {
                let Some((room, _)) = self.room.clone() else {
                    println!("not in a room: /join <room> first");
                    return Ok(true);
                };
                let recent = ChatRoomRef::new(room_id(&room))
                    .get_recent_messages(&self.client, ChatRoomGetRecentMessagesRequest::default())
                    .await?;
                if recent.messages.is_empty() {
                    println!("no messages in {room} yet");
                }
                for message in &recent.messages {
                    show(&room, message);
                }
            }
            _ if command.starts_with('/') => {
                println!("unknown command {command}; /help lists the commands");
            }
            _ => {
                let Some((room, _)) = self.room.clone() else {
                    println!("not in a room: /join <room> first (/list shows them)");
                    return Ok(true);
                };
                ChatRoomRef::new(room_id(&room))
                    .send_message(
                        &self.client,
                        ChatRoomSendChatMessageRequest {
                            user_name: String::new(),
                            message: line.to_owned(),
                        },
                    )
                    .await?;
            }
        }
        Ok(true)
    }

    async fn join(&mut self, room: &str) -> anyhow::Result<()> {
        check_room_name(room).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        self.leave().await?;
        let joined = ChatRoomRef::new(room_id(room))
            .join(
                &self.client,
                ChatRoomJoinRequest {
                    user_name: self.name.clone(),
                    client_id: String::new(),
                },
            )
            .await?;
        println!("joined {} as {}", joined.room_name, self.name);
        let mut newest = i64::MIN;
        for message in &joined.recent_messages {
            show(&joined.room_name, message);
            newest = newest.max(message.timestamp);
        }
        self.room = Some((joined.room_name, newest));
        Ok(())
    }

    async fn leave(&mut self) -> anyhow::Result<()> {
        if let Some((room, _)) = self.room.take() {
            ChatRoomRef::new(room_id(&room))
                .leave(&self.client, ChatRoomLeaveRequest {})
                .await?;
            println!("left {room}");
        }
        Ok(())
    }

    /// After a reconnect the client has a new id at another gate: the room pushes to the old
    /// one until it is joined again.
    async fn rejoin(&mut self) -> anyhow::Result<()> {
        let Some((room, newest)) = self.room.clone() else {
            return Ok(());
        };
        let joined = ChatRoomRef::new(room_id(&room))
            .join(
                &self.client,
                ChatRoomJoinRequest {
                    user_name: self.name.clone(),
                    client_id: String::new(),
                },
            )
            .await?;
        // Show what was said while the client was away.
        let mut shown = newest;
        for message in joined
            .recent_messages
            .iter()
            .filter(|m| m.timestamp > newest)
        {
            show(&room, message);
            shown = shown.max(message.timestamp);
        }
        self.room = Some((room.clone(), shown));
        println!("rejoined {room}");
        Ok(())
    }

    fn pushed(&mut self, any: &prost_types::Any) {
        let event = PushEvent::Message(any.clone());
        let notification = match event.decode::<ClientNewMessageNotification>() {
            None => {
                println!("(push of {})", any.type_url);
                return;
            }
            Some(Err(err)) => {
                eprintln!("! bad push: {err}");
                return;
            }
            Some(Ok(n)) => n,
        };
        let (Some((room, newest)), Some(message)) = (&mut self.room, &notification.message) else {
            return;
        };
        if notification.room_name == *room && message.timestamp > *newest {
            *newest = message.timestamp;
            show(room, message);
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let client = Client::builder(args.gate.iter().cloned()).build();
    let mut pushes = client
        .register()
        .await
        .with_context(|| format!("cannot register at {}", args.gate.join(" or ")))?;
    let mut chat = Chat {
        client,
        name: args.name,
        room: None,
    };
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => {
                let line = line.context("cannot read standard input")?;
                let Some(line) = line else {
                    chat.leave().await?;
                    break;
                };
                match chat.line(&line).await {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(err) => println!("! {err:#}"),
                }
            }
            event = pushes.next() => match event {
                Some(PushEvent::Message(any)) => chat.pushed(&any),
                Some(PushEvent::Connected { gate, client_id }) => {
                    println!("connected to {gate} as {client_id}; /help lists the commands");
                    if let Err(err) = chat.rejoin().await {
                        println!("! cannot rejoin: {err:#}");
                    }
                }
                Some(PushEvent::Disconnected { gate, error }) => {
                    println!("! lost gate {gate} ({error}); reconnecting");
                }
                None => anyhow::bail!("the push stream ended"),
            },
        }
    }
    println!("bye");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    goverse_sample_chat::init_logging("error");
    match run(Args::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
