// The tic-tac-toe page. It calls the gate that serves it with plain JSON bodies
// (POST /api/v1/objects/call/TicTacToeService/<service>/<method>); the game's ID and its service
// are kept in localStorage, so a reload (or a restarted server) finds the game again.
'use strict';

const API = '/api/v1/objects/call/TicTacToeService';
const SERVICES = 10;
const LINES = [[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 3, 6], [1, 4, 7], [2, 5, 8], [0, 4, 8], [2, 4, 6]];

const $ = (id) => document.getElementById(id);
let gameId = null;
let serviceId = null;
let state = null;
let busy = false;

// FNV-1a 32-bit, as the server's `service_for`: the same game always goes to the same service.
function serviceFor(id) {
  let hash = 0x811c9dc5;
  for (const byte of new TextEncoder().encode(id)) {
    hash ^= byte;
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return 'service-' + ((hash % SERVICES) + 1);
}

function newGameId() {
  return 'game-' + Math.random().toString(36).slice(2, 10) + '-' + Date.now();
}

async function call(method, body) {
  const response = await fetch(`${API}/${encodeURIComponent(serviceId)}/${method}`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
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

function show(next) {
  state = next;
  const cells = document.querySelectorAll('.cell');
  const board = state.board || [];
  cells.forEach((cell, i) => {
    const mark = board[i] || '';
    cell.textContent = mark;
    cell.className = 'cell' + (mark ? ' ' + mark : '');
    if (state.lastAiMove === i) cell.classList.add('last-ai-move');
  });
  if (state.winner) {
    const line = LINES.find(([a, b, c]) => board[a] && board[a] === board[b] && board[b] === board[c]);
    if (line) line.forEach((i) => cells[i].classList.add('winning'));
  }
  const status = $('status');
  status.className = 'status';
  switch (state.status) {
    case 'x_wins': status.textContent = 'You win!'; status.classList.add('win'); break;
    case 'o_wins': status.textContent = 'The AI wins.'; status.classList.add('lose'); break;
    case 'draw': status.textContent = "It's a draw."; status.classList.add('draw'); break;
    default: status.textContent = 'Your turn.';
  }
}

async function run(what, action) {
  if (busy) return;
  busy = true;
  document.body.classList.add('loading');
  $('message').textContent = '';
  try {
    await action();
  } catch (error) {
    $('message').textContent = `${what}: ${error.message}`;
  } finally {
    busy = false;
    document.body.classList.remove('loading');
  }
}

function setGame(id) {
  gameId = id;
  serviceId = serviceFor(id);
  localStorage.setItem('tictactoe.gameId', id);
  $('game-id').textContent = 'game ' + id;
  $('service-id').textContent = serviceId;
}

document.querySelectorAll('.cell').forEach((cell) => {
  cell.addEventListener('click', () => run('move refused', async () => {
    show(await call('MakeMove', { gameId, position: Number(cell.dataset.index) }));
  }));
});

$('new-game').addEventListener('click', () => run('cannot start a game', async () => {
  setGame(newGameId());
  show(await call('NewGame', { gameId }));
}));

run('cannot load the game', async () => {
  setGame(localStorage.getItem('tictactoe.gameId') || newGameId());
  show(await call('GetState', { gameId }));
});
