//! `chat-client`: the chat sample's terminal client. It speaks upstream's `gate.GateService`
//! over gRPC: a `Register` stream for pushes, `CallObject` for everything else, both on one
//! connection (the gate binds the client's identity to it).
//!
//! ```text
//! chat-client --gate 127.0.0.1:49000 --name alice
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
use goverse_proto::gate::gate_service_client::GateServiceClient;
use goverse_proto::gate::{CallObjectRequest, Empty, RegisterResponse};
use goverse_sample_chat::proto::{
    ChatMessage, ChatRoomGetRecentMessagesRequest, ChatRoomGetRecentMessagesResponse,
    ChatRoomJoinRequest, ChatRoomJoinResponse, ChatRoomLeaveRequest, ChatRoomLeaveResponse,
    ChatRoomListRequest, ChatRoomListResponse, ChatRoomSendChatMessageRequest,
    ClientNewMessageNotification, ClientSendChatMessageResponse,
};
use goverse_sample_chat::{MGR_ID, SYSTEM_USER, check_room_name, room_id};
use prost::{Message, Name};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::transport::Channel;

/// The chat sample's terminal client.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The gate's gRPC address.
    #[arg(long, default_value = "127.0.0.1:49000", env = "GOVERSE_GATE")]
    gate: String,
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

fn any_of<M: Message + Name>(message: &M) -> prost_types::Any {
    prost_types::Any {
        type_url: M::type_url(),
        value: message.encode_to_vec(),
    }
}

fn decode<M: Message + Name + Default>(any: &prost_types::Any) -> anyhow::Result<M> {
    anyhow::ensure!(
        is::<M>(any),
        "expected {}, got {}",
        M::full_name(),
        any.type_url
    );
    M::decode(any.value.as_slice()).with_context(|| format!("cannot decode {}", M::full_name()))
}

/// Whether `any` holds an `M` (by full name: clients disagree on the type URL's domain).
fn is<M: Name>(any: &prost_types::Any) -> bool {
    any.type_url.rsplit('/').next() == Some(M::full_name().as_str())
}

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
    gate: GateServiceClient<Channel>,
    client_id: String,
    name: String,
    /// The room joined, and the newest timestamp shown from it (pushes at or before it were
    /// already shown by a Join answer).
    room: Option<(String, i64)>,
}

impl Chat {
    async fn call<Req: Message + Name, Resp: Message + Name + Default>(
        &mut self,
        object_type: &str,
        id: &str,
        method: &str,
        request: &Req,
    ) -> anyhow::Result<Resp> {
        let response = self
            .gate
            .call_object(CallObjectRequest {
                client_id: self.client_id.clone(),
                r#type: object_type.to_owned(),
                id: id.to_owned(),
                method: method.to_owned(),
                request: Some(any_of(request)),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        let any = response
            .response
            .context("the gate answered without a response")?;
        decode(&any)
    }

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
                let rooms: ChatRoomListResponse = self
                    .call(
                        "ChatRoomMgr",
                        MGR_ID,
                        "ListChatRooms",
                        &ChatRoomListRequest {},
                    )
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
                let recent: ChatRoomGetRecentMessagesResponse = self
                    .call(
                        "ChatRoom",
                        &room_id(&room),
                        "GetRecentMessages",
                        &ChatRoomGetRecentMessagesRequest::default(),
                    )
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
                let _: ClientSendChatMessageResponse = self
                    .call(
                        "ChatRoom",
                        &room_id(&room),
                        "SendMessage",
                        &ChatRoomSendChatMessageRequest {
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
        let joined: ChatRoomJoinResponse = self
            .call(
                "ChatRoom",
                &room_id(room),
                "Join",
                &ChatRoomJoinRequest {
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
            let _: ChatRoomLeaveResponse = self
                .call(
                    "ChatRoom",
                    &room_id(&room),
                    "Leave",
                    &ChatRoomLeaveRequest {},
                )
                .await?;
            println!("left {room}");
        }
        Ok(())
    }

    fn pushed(&mut self, any: &prost_types::Any) {
        if !is::<ClientNewMessageNotification>(any) {
            println!("(push of {})", any.type_url);
            return;
        }
        let notification = match decode::<ClientNewMessageNotification>(any) {
            Ok(n) => n,
            Err(err) => {
                eprintln!("! bad push: {err:#}");
                return;
            }
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
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", args.gate))
        .with_context(|| format!("bad gate address {:?}", args.gate))?
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot connect to the gate at {}", args.gate))?;
    let mut gate = GateServiceClient::new(channel);
    let mut pushes = gate
        .register(Empty {})
        .await
        .map_err(|s| anyhow::anyhow!("Register refused: {:?}: {}", s.code(), s.message()))?
        .into_inner();
    let first = pushes
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("Register failed: {s}"))?
        .context("the gate closed the Register stream at once")?;
    let registered: RegisterResponse = decode(&first)?;
    let mut chat = Chat {
        gate,
        client_id: registered.client_id,
        name: args.name,
        room: None,
    };
    println!(
        "connected to {} as {}; /help lists the commands",
        args.gate, chat.client_id
    );
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
            push = pushes.message() => match push {
                Ok(Some(any)) => chat.pushed(&any),
                Ok(None) => anyhow::bail!("the gate closed the connection"),
                Err(status) => anyhow::bail!("the push stream broke: {status}"),
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
