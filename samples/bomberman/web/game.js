// The bomberman client. It registers over server-sent events (/api/v1/events/stream), joins the
// matchmaking queue, draws the snapshots its match pushes every tick, and sends the arrow keys
// and space as Match.HandleInput, all with plain-JSON calls to the gate that serves the page.
'use strict';

const API = '/api/v1';
const SNAPSHOT = 'bomberman.MatchSnapshot';
const CELL = 40;
const COLORS = ['#1f6feb', '#d1242f', '#f2cc60', '#8250df', '#ffffff', '#bf3989', '#0a7ea4', '#6e7781'];
const KEYS = { ArrowUp: 'DIR_UP', ArrowDown: 'DIR_DOWN', ArrowLeft: 'DIR_LEFT', ArrowRight: 'DIR_RIGHT' };

const state = { clientId: null, token: null, player: null, match: null, ended: false };
const $ = (id) => document.getElementById(id);

function setStatus(text, isError) {
  $('status').textContent = text;
  $('status').classList.toggle('error', Boolean(isError));
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
    // Not JSON: the status says what happened.
  }
  if (!response.ok) {
    throw new Error(data.error || `${response.status} ${response.statusText}`);
  }
  return data;
}

async function join() {
  const name = $('name').value.trim();
  if (!name) return;
  state.player = name;
  state.match = null;
  state.ended = false;
  $('stats').textContent = '';
  try {
    const answer = await call('MatchmakingQueue', 'MatchmakingQueue', 'JoinQueue', { playerId: name });
    if (!answer.ok) {
      setStatus(`not queued: ${answer.reason}`, true);
      return;
    }
    setStatus(`waiting for players (place ${answer.queuePosition || 1} in the queue)`);
  } catch (error) {
    setStatus(`cannot join: ${error.message}`, true);
  }
}

async function send(input) {
  if (!state.match || state.ended || !state.player) return;
  try {
    const answer = await call('Match', state.match, 'HandleInput', { playerId: state.player, ...input });
    if (!answer.ok) setStatus(`input refused: ${answer.reason}`, true);
  } catch (error) {
    setStatus(`input refused: ${error.message}`, true);
  }
}

function draw(s) {
  const canvas = $('board');
  const g = canvas.getContext('2d');
  const width = s.width || 13;
  const height = s.height || 11;
  canvas.width = width * CELL;
  canvas.height = height * CELL;
  (s.tiles || []).forEach((tile, i) => {
    const x = (i % width) * CELL;
    const y = Math.floor(i / width) * CELL;
    g.fillStyle = tile === 'TILE_WALL' ? '#555' : tile === 'TILE_BLOCK' ? '#a0522d' : '#3a7d44';
    g.fillRect(x, y, CELL, CELL);
  });
  for (const p of s.powerups || []) {
    g.fillStyle = p.kind === 'POWERUP_BOMB' ? '#000' : p.kind === 'POWERUP_POWER' ? '#ff8c00' : '#00bfff';
    g.fillRect(p.x * CELL + 12, p.y * CELL + 12, CELL - 24, CELL - 24);
  }
  for (const b of s.bombs || []) {
    g.fillStyle = '#111';
    g.beginPath();
    g.arc(b.x * CELL + CELL / 2, b.y * CELL + CELL / 2, CELL / 2 - 6, 0, 2 * Math.PI);
    g.fill();
  }
  for (const e of s.explosions || []) {
    g.fillStyle = 'rgba(255, 120, 0, 0.85)';
    g.fillRect(e.x * CELL + 2, e.y * CELL + 2, CELL - 4, CELL - 4);
  }
  const list = $('players');
  list.textContent = '';
  (s.players || []).forEach((p, i) => {
    const x = p.x || 0;
    const y = p.y || 0;
    if (p.alive) {
      g.fillStyle = COLORS[i % COLORS.length];
      g.fillRect(x * CELL + 8, y * CELL + 8, CELL - 16, CELL - 16);
    }
    const item = document.createElement('li');
    item.dataset.player = p.playerId;
    item.textContent = `${p.playerId} (${x},${y})${p.alive ? '' : ' out'}`;
    item.style.color = COLORS[i % COLORS.length];
    if (!p.alive) item.classList.add('dead');
    list.appendChild(item);
  });
}

async function onSnapshot(s) {
  if (!s.players || !s.players.some((p) => p.playerId === state.player)) return;
  state.match = s.matchId;
  draw(s);
  if (s.status === 'MATCH_STATUS_ENDED') {
    if (state.ended) return;
    state.ended = true;
    if (!s.winnerId) setStatus('time is up: a draw');
    else if (s.winnerId === state.player) setStatus('You win!');
    else setStatus(`${s.winnerId} wins`);
    showStats();
  } else {
    setStatus(`${s.matchId}: tick ${s.tick || 0}`);
  }
}

async function showStats() {
  // Results are recorded right after the match ends; ask until this one is in.
  for (let i = 0; i < 20; i++) {
    try {
      const answer = await call('Player', `Player-${state.player}`, 'GetStats', {});
      const stats = answer.stats || {};
      if (stats.lastMatchId === state.match) {
        $('stats').textContent = `${state.player}: ${stats.wins || 0} wins, ${stats.losses || 0} losses in ${stats.totalMatches || 0} matches`;
        return;
      }
    } catch (_) {
      // Try again below.
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
}

function connect() {
  const source = new EventSource(`${API}/events/stream`);
  source.addEventListener('register', (event) => {
    const data = JSON.parse(event.data);
    state.clientId = data.clientId;
    state.token = data.token;
    setStatus(`connected as ${data.clientId}`);
    // After a reconnect the queue has the old client: join again.
    if (state.player && !state.match) join();
  });
  source.addEventListener('message', (event) => {
    const data = JSON.parse(event.data);
    if (data.type && data.type.endsWith('/' + SNAPSHOT) && data.json) onSnapshot(data.json);
  });
  source.addEventListener('heartbeat', () => {});
  source.onerror = () => {
    state.clientId = null;
    setStatus('connection lost; reconnecting…', true);
  };
}

$('join-form').addEventListener('submit', (event) => {
  event.preventDefault();
  join();
});

document.addEventListener('keydown', (event) => {
  if (event.target && event.target.tagName === 'INPUT') return;
  if (KEYS[event.key]) {
    event.preventDefault();
    send({ move: KEYS[event.key] });
  } else if (event.key === ' ') {
    event.preventDefault();
    send({ placeBomb: true });
  }
});

connect();
