//! The rules of a match, with no I/O: the grid, moves, bombs, blasts, power-ups and the end.
//! [`MatchState::tick`] advances one tick; [`MatchState::snapshot`] is what players see.

use std::collections::BTreeMap;

use crate::proto::{
    BombState, Direction, ExplosionState, MatchSnapshot, MatchStatus, PlayerState, PowerupKind,
    PowerupState, Tile,
};

/// Columns of the grid.
pub const WIDTH: i32 = 13;
/// Rows of the grid.
pub const HEIGHT: i32 = 11;
/// Ticks per second.
pub const TICK_HZ: u32 = 10;
/// Ticks from placing a bomb to its blast (2 s).
pub const FUSE_TICKS: i32 = 20;
/// Ticks a blast stays on its cells (0.5 s).
pub const BLAST_TICKS: i32 = 5;
/// The longest match (3 minutes); then it ends without a winner. `BOMBERMAN_MATCH_TIME_LIMIT_TICKS`
/// (upstream's variable, which its stress client sets) changes it for the matches a process
/// makes.
pub const TIME_LIMIT_TICKS: i32 = 1800;

/// The time limit of new matches: [`TIME_LIMIT_TICKS`], or `BOMBERMAN_MATCH_TIME_LIMIT_TICKS`.
fn time_limit() -> i32 {
    std::env::var("BOMBERMAN_MATCH_TIME_LIMIT_TICKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&ticks: &i32| ticks > 0)
        .unwrap_or(TIME_LIMIT_TICKS)
}

fn default_time_limit() -> i32 {
    TIME_LIMIT_TICKS
}
/// The chance, in percent, that a broken block leaves a power-up.
pub const DROP_PERCENT: u32 = 30;
/// Players needed to start.
pub const MIN_PLAYERS: usize = 2;
/// Players a match holds.
pub const MAX_PLAYERS: usize = 8;

/// Where players start: the four corners, then the middles of the edges.
pub const SPAWNS: [(i32, i32); MAX_PLAYERS] = [
    (1, 1),
    (WIDTH - 2, 1),
    (1, HEIGHT - 2),
    (WIDTH - 2, HEIGHT - 2),
    (WIDTH / 2, 1),
    (WIDTH / 2, HEIGHT - 2),
    (1, HEIGHT / 2),
    (WIDTH - 2, HEIGHT / 2),
];

/// One player in a match.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Player {
    /// The client the player plays from (pushes go there; input is taken only from it).
    pub client_id: String,
    pub x: i32,
    pub y: i32,
    pub alive: bool,
    pub bomb_capacity: i32,
    pub bomb_power: i32,
    pub speed: i32,
    pub active_bombs: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Bomb {
    x: i32,
    y: i32,
    owner: String,
    power: i32,
    fuse: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Blast {
    x: i32,
    y: i32,
    left: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Powerup {
    x: i32,
    y: i32,
    kind: i32,
}

/// A player's intent for the next tick.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Input {
    pub step: i32,
    pub bomb: bool,
}

/// The whole state of a match.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MatchState {
    /// `Tile` values, row by row.
    tiles: Vec<i32>,
    pub players: BTreeMap<String, Player>,
    bombs: Vec<Bomb>,
    blasts: Vec<Blast>,
    powerups: Vec<Powerup>,
    pub tick: i32,
    /// A `MatchStatus` value.
    pub status: i32,
    pub winner: String,
    inputs: BTreeMap<String, Input>,
    /// The power-up dice, seeded from the match ID so a match replays the same.
    seed: u64,
    /// Ticks until the match ends without a winner.
    #[serde(default = "default_time_limit")]
    time_limit: i32,
}

fn delta(direction: i32) -> (i32, i32) {
    match Direction::try_from(direction) {
        Ok(Direction::DirUp) => (0, -1),
        Ok(Direction::DirDown) => (0, 1),
        Ok(Direction::DirLeft) => (-1, 0),
        Ok(Direction::DirRight) => (1, 0),
        _ => (0, 0),
    }
}

impl MatchState {
    /// A match in the lobby: walls around and in every other cell of even rows and columns,
    /// blocks everywhere else but the corners' three-cell pockets.
    pub fn new(seed: u64) -> Self {
        let mut tiles = vec![Tile::Block as i32; (WIDTH * HEIGHT) as usize];
        for y in 0..HEIGHT {
            for x in 0..WIDTH {
                let border = x == 0 || y == 0 || x == WIDTH - 1 || y == HEIGHT - 1;
                if border || (x % 2 == 0 && y % 2 == 0) {
                    tiles[(y * WIDTH + x) as usize] = Tile::Wall as i32;
                }
            }
        }
        let (r, b) = (WIDTH - 2, HEIGHT - 2);
        let pockets = [
            [(1, 1), (2, 1), (1, 2)],
            [(r, 1), (r - 1, 1), (r, 2)],
            [(1, b), (2, b), (1, b - 1)],
            [(r, b), (r - 1, b), (r, b - 1)],
        ];
        for (x, y) in pockets.into_iter().flatten() {
            tiles[(y * WIDTH + x) as usize] = Tile::Empty as i32;
        }
        // The edge middles (spawns 5-8) get room too.
        for (x, y) in &SPAWNS[4..] {
            tiles[(y * WIDTH + x) as usize] = Tile::Empty as i32;
        }
        MatchState {
            tiles,
            players: BTreeMap::new(),
            bombs: Vec::new(),
            blasts: Vec::new(),
            powerups: Vec::new(),
            tick: 0,
            status: MatchStatus::Lobby as i32,
            winner: String::new(),
            inputs: BTreeMap::new(),
            seed: seed | 1,
            time_limit: time_limit(),
        }
    }

    fn tile(&self, x: i32, y: i32) -> i32 {
        if !(0..WIDTH).contains(&x) || !(0..HEIGHT).contains(&y) {
            return Tile::Wall as i32;
        }
        self.tiles[(y * WIDTH + x) as usize]
    }

    fn set_tile(&mut self, x: i32, y: i32, tile: Tile) {
        if (0..WIDTH).contains(&x) && (0..HEIGHT).contains(&y) {
            self.tiles[(y * WIDTH + x) as usize] = tile as i32;
        }
    }

    /// Adds a player at a spawn cell; refused (with the reason) outside the lobby, for a
    /// player already in, a full match or a cell that is not free.
    pub fn add_player(&mut self, id: &str, client_id: &str, x: i32, y: i32) -> Result<(), String> {
        if self.status != MatchStatus::Lobby as i32 {
            return Err("the match has started".to_owned());
        }
        if self.players.contains_key(id) {
            return Err(format!("player {id} is in the match already"));
        }
        if self.players.len() >= MAX_PLAYERS {
            return Err(format!("the match is full ({MAX_PLAYERS} players)"));
        }
        if self.tile(x, y) != Tile::Empty as i32
            || self.players.values().any(|p| (p.x, p.y) == (x, y))
        {
            return Err(format!("spawn cell ({x},{y}) is not free"));
        }
        self.players.insert(
            id.to_owned(),
            Player {
                client_id: client_id.to_owned(),
                x,
                y,
                alive: true,
                bomb_capacity: 1,
                bomb_power: 2,
                speed: 1,
                active_bombs: 0,
            },
        );
        Ok(())
    }

    /// Starts the match; refused unless in the lobby with enough players.
    pub fn start(&mut self) -> Result<(), String> {
        if self.status != MatchStatus::Lobby as i32 {
            return Err("the match has started".to_owned());
        }
        if self.players.len() < MIN_PLAYERS {
            return Err(format!(
                "{} players; a match needs {MIN_PLAYERS}",
                self.players.len()
            ));
        }
        self.status = MatchStatus::Running as i32;
        Ok(())
    }

    /// Queues `player`'s input for the next tick (the last one before the tick counts). A
    /// dead player's input is dropped.
    pub fn input(&mut self, player: &str, input: Input) -> Result<(), String> {
        let Some(p) = self.players.get(player) else {
            return Err(format!("player {player} is not in this match"));
        };
        if p.alive {
            self.inputs.insert(player.to_owned(), input);
        }
        Ok(())
    }

    fn roll(&mut self, below: u32) -> u32 {
        // xorshift64: deterministic from the seed, no dependency in the saved state.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        (self.seed % u64::from(below)) as u32
    }

    fn free_for(&self, x: i32, y: i32, mover: &str) -> bool {
        self.tile(x, y) == Tile::Empty as i32
            && !self.bombs.iter().any(|b| (b.x, b.y) == (x, y))
            && !self
                .players
                .iter()
                .any(|(id, p)| id != mover && p.alive && (p.x, p.y) == (x, y))
    }

    /// One tick: inputs, fuses and blasts, power-ups, the end.
    pub fn tick(&mut self) {
        if self.status != MatchStatus::Running as i32 {
            return;
        }
        let inputs = std::mem::take(&mut self.inputs);
        for (id, input) in inputs {
            let Some(p) = self.players.get(&id) else {
                continue;
            };
            if !p.alive {
                continue;
            }
            let (dx, dy) = delta(input.step);
            let (mut x, mut y) = (p.x, p.y);
            for _ in 0..p.speed {
                if (dx, dy) == (0, 0) || !self.free_for(x + dx, y + dy, &id) {
                    break;
                }
                (x, y) = (x + dx, y + dy);
            }
            let p = self.players.get_mut(&id).expect("looked up above");
            (p.x, p.y) = (x, y);
            if input.bomb
                && p.active_bombs < p.bomb_capacity
                && !self.bombs.iter().any(|b| (b.x, b.y) == (x, y))
            {
                p.active_bombs += 1;
                let power = p.bomb_power;
                self.bombs.push(Bomb {
                    x,
                    y,
                    owner: id.clone(),
                    power,
                    fuse: FUSE_TICKS,
                });
            }
        }
        for bomb in &mut self.bombs {
            bomb.fuse -= 1;
        }
        // Bombs whose fuse ran out go off; a blast on another bomb sets that one off in the
        // same tick.
        while let Some(i) = self.bombs.iter().position(|b| b.fuse <= 0) {
            let bomb = self.bombs.swap_remove(i);
            self.explode(&bomb);
        }
        for blast in &mut self.blasts {
            blast.left -= 1;
        }
        self.blasts.retain(|b| b.left > 0);
        let mut taken = Vec::new();
        for (i, powerup) in self.powerups.iter().enumerate() {
            if let Some(p) = self
                .players
                .values_mut()
                .find(|p| p.alive && (p.x, p.y) == (powerup.x, powerup.y))
            {
                match PowerupKind::try_from(powerup.kind) {
                    Ok(PowerupKind::PowerupBomb) => p.bomb_capacity += 1,
                    Ok(PowerupKind::PowerupPower) => p.bomb_power += 1,
                    Ok(PowerupKind::PowerupSpeed) => p.speed += 1,
                    _ => {}
                }
                taken.push(i);
            }
        }
        for i in taken.into_iter().rev() {
            self.powerups.remove(i);
        }
        self.tick += 1;
        self.settle();
    }

    fn explode(&mut self, bomb: &Bomb) {
        if let Some(owner) = self.players.get_mut(&bomb.owner) {
            owner.active_bombs = (owner.active_bombs - 1).max(0);
        }
        let mut cells = vec![(bomb.x, bomb.y)];
        for (dx, dy) in [(0, -1), (0, 1), (-1, 0), (1, 0)] {
            for r in 1..=bomb.power {
                let (x, y) = (bomb.x + dx * r, bomb.y + dy * r);
                let tile = self.tile(x, y);
                if tile == Tile::Wall as i32 {
                    break;
                }
                cells.push((x, y));
                if tile == Tile::Block as i32 {
                    self.set_tile(x, y, Tile::Empty);
                    if self.roll(100) < DROP_PERCENT {
                        let kind = 1 + self.roll(3) as i32;
                        self.powerups.push(Powerup { x, y, kind });
                    }
                    break;
                }
            }
        }
        for (x, y) in cells {
            self.blasts.push(Blast {
                x,
                y,
                left: BLAST_TICKS,
            });
            self.powerups.retain(|p| (p.x, p.y) != (x, y));
            for p in self.players.values_mut() {
                if (p.x, p.y) == (x, y) {
                    p.alive = false;
                }
            }
            for other in &mut self.bombs {
                if (other.x, other.y) == (x, y) {
                    other.fuse = 0;
                }
            }
        }
    }

    /// Ends the match when at most one player is alive (the last one wins) or time is up
    /// (nobody wins).
    fn settle(&mut self) {
        let alive: Vec<&String> = self
            .players
            .iter()
            .filter(|(_, p)| p.alive)
            .map(|(id, _)| id)
            .collect();
        if alive.len() <= 1 {
            self.winner = alive.first().map(|id| (*id).clone()).unwrap_or_default();
            self.status = MatchStatus::Ended as i32;
        } else if self.tick >= self.time_limit {
            self.status = MatchStatus::Ended as i32;
        }
    }

    /// Whether the match is over.
    pub fn ended(&self) -> bool {
        self.status == MatchStatus::Ended as i32
    }

    /// What players see.
    pub fn snapshot(&self, match_id: &str) -> MatchSnapshot {
        MatchSnapshot {
            match_id: match_id.to_owned(),
            status: self.status,
            tick: self.tick,
            width: WIDTH,
            height: HEIGHT,
            tiles: self.tiles.clone(),
            players: self
                .players
                .iter()
                .map(|(id, p)| PlayerState {
                    player_id: id.clone(),
                    x: p.x,
                    y: p.y,
                    alive: p.alive,
                    bomb_capacity: p.bomb_capacity,
                    bomb_power: p.bomb_power,
                    speed: p.speed,
                    active_bombs: p.active_bombs,
                })
                .collect(),
            bombs: self
                .bombs
                .iter()
                .map(|b| BombState {
                    x: b.x,
                    y: b.y,
                    owner_id: b.owner.clone(),
                    power: b.power,
                    ticks_remaining: b.fuse,
                })
                .collect(),
            explosions: self
                .blasts
                .iter()
                .map(|b| ExplosionState {
                    x: b.x,
                    y: b.y,
                    ticks_remaining: b.left,
                })
                .collect(),
            powerups: self
                .powerups
                .iter()
                .map(|p| PowerupState {
                    x: p.x,
                    y: p.y,
                    kind: p.kind,
                })
                .collect(),
            winner_id: self.winner.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_players() -> MatchState {
        let mut m = MatchState::new(42);
        m.add_player("a", "ca", 1, 1).unwrap();
        m.add_player("b", "cb", WIDTH - 2, HEIGHT - 2).unwrap();
        m.start().unwrap();
        m
    }

    fn step(m: &mut MatchState, who: &str, direction: Direction, bomb: bool) {
        m.input(
            who,
            Input {
                step: direction as i32,
                bomb,
            },
        )
        .unwrap();
        m.tick();
    }

    #[test]
    fn the_grid_has_walls_pillars_blocks_and_free_corners() {
        let m = MatchState::new(1);
        assert_eq!(m.tile(0, 0), Tile::Wall as i32);
        assert_eq!(m.tile(2, 2), Tile::Wall as i32);
        assert_eq!(m.tile(3, 3), Tile::Block as i32);
        for (x, y) in SPAWNS {
            assert_eq!(m.tile(x, y), Tile::Empty as i32, "spawn ({x},{y})");
        }
        assert_eq!(m.tile(2, 1), Tile::Empty as i32);
        assert_eq!(m.tile(3, 1), Tile::Block as i32);
    }

    #[test]
    fn lobby_rules_are_enforced() {
        let mut m = MatchState::new(1);
        m.add_player("a", "", 1, 1).unwrap();
        assert!(m.add_player("a", "", 2, 1).unwrap_err().contains("already"));
        assert!(
            m.add_player("b", "", 3, 1)
                .unwrap_err()
                .contains("not free")
        );
        assert!(m.start().unwrap_err().contains("needs 2"));
        m.add_player("b", "", WIDTH - 2, 1).unwrap();
        m.start().unwrap();
        assert!(m.add_player("c", "", 1, HEIGHT - 2).is_err());
        assert!(m.input("zed", Input::default()).is_err());
    }

    #[test]
    fn moves_stop_at_walls_and_blocks() {
        let mut m = two_players();
        step(&mut m, "a", Direction::DirUp, false);
        assert_eq!((m.players["a"].x, m.players["a"].y), (1, 1));
        step(&mut m, "a", Direction::DirRight, false);
        assert_eq!((m.players["a"].x, m.players["a"].y), (2, 1));
        step(&mut m, "a", Direction::DirRight, false);
        assert_eq!(
            (m.players["a"].x, m.players["a"].y),
            (2, 1),
            "a block at (3,1)"
        );
    }

    #[test]
    fn a_bomb_breaks_blocks_and_kills_and_the_other_player_wins() {
        let mut m = two_players();
        step(&mut m, "a", Direction::DirNone, true);
        assert_eq!(m.players["a"].active_bombs, 1);
        // The tick that places a bomb burns its first tick of fuse.
        for _ in 0..FUSE_TICKS - 2 {
            m.tick();
            assert!(!m.ended());
        }
        m.tick();
        assert!(m.ended());
        assert!(!m.players["a"].alive);
        assert_eq!(m.winner, "b");
        // The blast broke the block two cells right ((3,1)) and stopped there.
        assert_eq!(m.tile(3, 1), Tile::Empty as i32);
        let snapshot = m.snapshot("Match-1");
        assert_eq!(snapshot.winner_id, "b");
        assert_eq!(snapshot.status, MatchStatus::Ended as i32);
        assert_eq!(snapshot.tiles.len(), (WIDTH * HEIGHT) as usize);
    }

    #[test]
    fn a_blast_sets_off_another_bomb_in_the_same_tick() {
        let mut m = two_players();
        step(&mut m, "a", Direction::DirNone, true);
        for _ in 0..5 {
            m.tick();
        }
        m.players.get_mut("a").unwrap().bomb_capacity = 2;
        step(&mut m, "a", Direction::DirRight, true);
        assert_eq!(m.bombs.len(), 2);
        for _ in 0..12 {
            m.tick();
        }
        assert_eq!(m.bombs.len(), 2);
        assert!(m.bombs.iter().all(|b| b.fuse > 0));
        m.tick();
        assert!(
            m.bombs.is_empty(),
            "the first blast set the second bomb off"
        );
    }

    #[test]
    fn time_runs_out_without_a_winner() {
        let mut m = two_players();
        for _ in 0..TIME_LIMIT_TICKS {
            m.tick();
        }
        assert!(m.ended());
        assert_eq!(m.winner, "");
    }
}
