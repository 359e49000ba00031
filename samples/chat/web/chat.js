// The chat sample's web client. It talks to the gate that serves it: server-sent events for
// pushes (/api/v1/events/stream) and plain-JSON calls (/api/v1/objects/call/...). The events
// stream's `register` event hands out a client id and a token; calls carry both, and the gate
// binds them, so objects see this tab as the member that joined.
'use strict';

const API = '/api/v1';
const NOTIFICATION = 'chat.Client_NewMessageNotification';

const state = {
  clientId: null,
  token: null,
  room: null,
  // Timestamps of the messages shown, ascending; a room's timestamps are unique and increasing,
  // so they order the list and drop duplicates (a push can overtake the Join answer).
  shown: [],
};

const $ = (id) => document.getElementById(id);

function setStatus(text, isError) {
  const status = $('status');
  status.textContent = text;
  status.classList.toggle('error', Boolean(isError));
}

async function call(type, id, method, body) {
  const headers = { 'Content-Type': 'application/json' };
  if (state.clientId) {
    headers['X-Client-ID'] = state.clientId;
    headers['X-Client-Token'] = state.token;
  }
  const path = [type, id, method].map(encodeURIComponent).join('/');
  const response = await fetch(`${API}/objects/call/${path}`, {
    method: 'POST',
    headers,
    body: JSON.stringify(body || {}),
  });
  let data = {};
  try {
    data = await response.json();
  } catch (_) {
    // Not JSON: report the status below.
  }
  if (!response.ok) {
    throw new Error(data.error || `${response.status} ${response.statusText}`);
  }
  return data;
}

function connect() {
  const source = new EventSource(`${API}/events/stream`);
  source.addEventListener('register', async (event) => {
    const data = JSON.parse(event.data);
    state.clientId = data.clientId;
    state.token = data.token;
    setStatus(`connected as ${data.clientId}`);
    await loadRooms();
    // After a reconnect the membership belonged to the old client id: join again.
    if (state.room) {
      await join(state.room, true);
    }
  });
  source.addEventListener('message', (event) => onPush(JSON.parse(event.data)));
  source.addEventListener('heartbeat', () => {});
  source.onerror = () => {
    // EventSource reconnects by itself; a new `register` event follows.
    state.clientId = null;
    setStatus('connection lost; reconnecting…', true);
  };
}

function onPush(data) {
  if (!data.type || !data.type.endsWith('/' + NOTIFICATION) || !data.json) {
    return;
  }
  const { message, roomName } = data.json;
  if (message && roomName === state.room) {
    show(message);
  }
}

function show(message) {
  const ts = Number(message.timestamp);
  let at = state.shown.length;
  while (at > 0 && state.shown[at - 1] > ts) {
    at -= 1;
  }
  if (at > 0 && state.shown[at - 1] === ts) {
    return;
  }
  const item = document.createElement('li');
  const time = document.createElement('span');
  time.className = 'time';
  time.textContent = new Date(ts / 1000).toLocaleTimeString();
  item.append(time);
  if (message.userName === 'SYSTEM') {
    item.className = 'system';
  } else {
    const user = document.createElement('span');
    user.className = 'user';
    user.textContent = message.userName + ':';
    item.append(user);
    if (message.userName === $('name').value.trim()) {
      item.classList.add('mine');
    }
  }
  const text = document.createElement('span');
  text.className = 'text';
  text.textContent = message.message;
  item.append(text);
  item.dataset.ts = String(ts);

  const list = $('messages');
  const stick = list.scrollTop + list.clientHeight >= list.scrollHeight - 4;
  list.insertBefore(item, list.children[at] || null);
  state.shown.splice(at, 0, ts);
  if (stick) {
    list.scrollTop = list.scrollHeight;
  }
}

async function loadRooms() {
  try {
    const { chatRooms } = await call('ChatRoomMgr', 'ChatRoomMgr0', 'ListChatRooms');
    const list = $('rooms');
    list.replaceChildren(
      ...chatRooms.map((room) => {
        const item = document.createElement('li');
        const button = document.createElement('button');
        button.type = 'button';
        button.textContent = room;
        button.dataset.room = room;
        button.classList.toggle('current', room === state.room);
        button.addEventListener('click', () => join(room, false));
        item.append(button);
        return item;
      }),
    );
  } catch (err) {
    setStatus(`cannot list rooms: ${err.message}`, true);
  }
}

async function join(room, rejoin) {
  const name = $('name').value.trim();
  if (!name) {
    setStatus('enter your name first', true);
    $('name').focus();
    return;
  }
  if (!state.clientId) {
    setStatus('not connected yet; try again in a moment', true);
    return;
  }
  localStorage.setItem('chat-name', name);
  try {
    if (state.room && state.room !== room) {
      await leave();
    }
    if (!rejoin || state.room !== room) {
      state.shown = [];
      $('messages').replaceChildren();
    }
    state.room = room;
    const joined = await call('ChatRoom', `ChatRoom-${room}`, 'Join', { userName: name });
    joined.recentMessages.forEach(show);
    $('room-title').textContent = joined.roomName;
    $('lobby').hidden = true;
    $('room').hidden = false;
    setStatus(`in ${joined.roomName} as ${name}`);
    await loadRooms();
    $('input').focus();
  } catch (err) {
    state.room = null;
    setStatus(`cannot join ${room}: ${err.message}`, true);
  }
}

async function leave() {
  const room = state.room;
  state.room = null;
  $('room').hidden = true;
  $('lobby').hidden = false;
  if (room && state.clientId) {
    try {
      await call('ChatRoom', `ChatRoom-${room}`, 'Leave');
    } catch (err) {
      setStatus(`cannot leave ${room}: ${err.message}`, true);
    }
  }
  await loadRooms();
}

async function send() {
  const input = $('input');
  const text = input.value.trim();
  if (!text || !state.room) {
    return;
  }
  $('send').disabled = true;
  try {
    // Shown when its push arrives, like everyone else's.
    await call('ChatRoom', `ChatRoom-${state.room}`, 'SendMessage', { message: text });
    input.value = '';
  } catch (err) {
    setStatus(`not sent: ${err.message}`, true);
  } finally {
    $('send').disabled = false;
    input.focus();
  }
}

document.addEventListener('DOMContentLoaded', () => {
  $('name').value = localStorage.getItem('chat-name') || '';
  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    send();
  });
  $('new-room').addEventListener('submit', (event) => {
    event.preventDefault();
    const room = $('new-room-name').value.trim();
    if (room) {
      $('new-room-name').value = '';
      join(room, false);
    }
  });
  $('leave').addEventListener('click', () => leave());
  connect();
});
