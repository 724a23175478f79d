// The dice demo page: the unmodified phoenix.js client (served by phxgate
// from node_modules) playing the built-in demo game on table:<id>.
//
// URL: ?player=NAME (default: a random name), ?table=ID (default 1),
// ?transport=longpoll to skip WebSocket.
//
// Resume: the channel opts in to stream positions ("offset" in its join
// payload, a closure evaluated on every rejoin). Every broadcast carries its
// position in the ref slot; the page keeps the last one, so a rejoin after
// a lost connection is replayed what it missed, in order. A rejoin told
// recovered: false (history lost: a gateway restart, too long away) or a
// new epoch starts the list of rounds over: the table may count from 1
// again, and its old round numbers mean nothing now.
import { Socket, Presence, LongPoll } from "/demo/phoenix.mjs";

const q = new URLSearchParams(location.search);
const player = q.get("player") || `player-${Math.random().toString(36).slice(2, 8)}`;
const tableId = q.get("table") || "1";
const topic = `table:${tableId}`;
const dropMs = Number.parseInt(q.get("drop_ms") || "5000", 10);
const MAX_RESULTS = 50;

const $ = (id) => document.getElementById(id);

// Everything the page knows; window.diceDemo lets a test or a curious
// developer look at it.
const state = {
  player,
  topic,
  token: null,
  tokenExpiresAt: 0,
  tokenFetchedAt: 0,
  lastPosition: null, // the newest "p:<epoch>:<offset>" seen on the channel
  balance: null,
  openRoundAtJoin: 0, // payouts of rounds before it are in the join's balance
  lastRound: 0, // since the last start over (0: none yet)
  results: [], // newest last
  gaps: 0, // round numbers never seen (a resume that could not recover)
  duplicates: 0, // results delivered twice (never, if resume works)
  startOvers: 0, // joins that lost the history (recovered false, new epoch)
  joins: 0,
  disconnects: 0,
  recovered: null,
};
window.diceDemo = state;

$("player").textContent = player;
$("table").textContent = topic;
document.title = `${player} at ${topic} — phxgate dice`;

// ---- tokens ---------------------------------------------------------------

let refreshTimer = null;

// fetchToken gets a fresh token from /dev/token and schedules the next
// refresh when two thirds of its life have passed, so the socket's params
// closure always hands out a valid one (the gateway closes a socket whose
// token expires, and phoenix.js reconnects with fresh params).
async function fetchToken() {
  clearTimeout(refreshTimer);
  try {
    const r = await fetch(`/dev/token?player=${encodeURIComponent(player)}`, { cache: "no-store" });
    const body = await r.json();
    if (!r.ok) throw new Error(body.error || `HTTP ${r.status}`);
    state.token = body.token;
    state.tokenFetchedAt = Date.now();
    state.tokenExpiresAt = body.expires_at_ms;
    const life = body.expires_at_ms - Date.now();
    refreshTimer = setTimeout(fetchToken, Math.max(1000, (life * 2) / 3));
  } catch (err) {
    setConn("error", `no token: ${err.message}`);
    refreshTimer = setTimeout(fetchToken, 2000);
    throw err;
  }
}

// TOKEN_RETRY_MS spaces the token fetches of failed connects.
const TOKEN_RETRY_MS = 5000;

const tokenStale = () => !state.token || Date.now() >= state.tokenExpiresAt - 1000;

// ---- rendering ------------------------------------------------------------

function setConn(s, text = s) {
  const el = $("conn-state");
  el.dataset.state = s;
  el.textContent = text;
}

function renderBalance() {
  $("balance").textContent = state.balance === null ? "—" : String(state.balance);
}

function renderResults() {
  const ol = $("results");
  ol.replaceChildren(
    ...state.results
      .slice()
      .reverse()
      .map((r) => {
        const li = document.createElement("li");
        li.value = r.round;
        li.dataset.round = String(r.round);
        li.dataset.roll = String(r.roll);
        const winners = Object.entries(r.payouts);
        const text = winners.length
          ? winners.map(([p, amount]) => `${p} +${amount}`).join(", ")
          : "nobody won";
        li.append(`Round ${r.round}: rolled ${r.roll} (${r.roll >= 4 ? "high" : "low"}) — `);
        const span = document.createElement("span");
        span.textContent = text;
        if (r.payouts[player]) span.className = "won";
        li.append(span);
        return li;
      }),
  );
}

function renderPlayers(presence) {
  const ul = $("players");
  const items = presence.list((name, { metas }) => {
    const li = document.createElement("li");
    li.dataset.player = name;
    li.textContent = metas.length > 1 ? `${name} (${metas.length} tabs)` : name;
    if (name === player) {
      li.classList.add("me");
      li.append(" (you)");
    }
    return li;
  });
  items.sort((a, b) => a.dataset.player.localeCompare(b.dataset.player));
  ul.replaceChildren(...items);
}

// ---- the socket and the channel --------------------------------------------

// epochOf is the epoch of a "p:<epoch>:<offset>" position, or null.
function epochOf(pos) {
  const m = typeof pos === "string" ? /^p:(.*):[^:]*$/.exec(pos) : null;
  return m ? m[1] : null;
}

// startOver forgets the rounds seen so far: after a loss of history the
// table's numbers may begin again, and a round at or below the old last
// one is new, not a duplicate.
function startOver() {
  state.startOvers++;
  state.lastRound = 0;
  state.results = [];
  renderResults();
}

function addResult(r) {
  if (!Number.isInteger(r.round)) return;
  if (r.round <= state.lastRound) {
    // Seen already: the gateway delivers each event once, so count it.
    state.duplicates++;
    return;
  }
  if (state.lastRound && r.round > state.lastRound + 1) state.gaps += r.round - state.lastRound - 1;
  state.lastRound = r.round;
  state.results.push(r);
  if (state.results.length > MAX_RESULTS) state.results.shift();
  const won = r.payouts[player];
  if (won && state.balance !== null && r.round >= state.openRoundAtJoin) {
    state.balance += won;
    renderBalance();
  }
  renderResults();
}

async function main() {
  setConn("connecting", "fetching a token");
  while (!state.token) {
    try {
      await fetchToken();
    } catch {
      await new Promise((ok) => setTimeout(ok, 2000));
    }
  }
  // No longPollFallbackMs: phoenix.js would also take it after a network
  // loss (a reconnect slower than the fallback time) and keep long-poll
  // for the tab's life. Without WebSocket at all, phoenix.js uses
  // long-poll by itself; ?transport=longpoll forces it.
  const opts = { params: () => ({ token: state.token }) };
  if (q.get("transport") === "longpoll") opts.transport = LongPoll;
  const socket = new Socket("/socket", opts);
  state.socket = socket;
  const transportName = () => (socket.transport === LongPoll ? "longpoll" : "websocket");

  socket.onOpen(() => {
    $("transport").textContent = transportName();
    setConn("connected", "connected, joining");
  });
  socket.onClose(() => {
    state.disconnects++;
    setConn("disconnected", "disconnected, reconnecting");
  });
  socket.onError(() => {
    setConn("disconnected", "connection lost, reconnecting");
    // A connect that fails may be a refused token (phxgate restarted
    // with a new dev secret): fetch a fresh one now and then, so the tab
    // comes back by itself once phxgate answers again.
    const due = Date.now() - state.tokenFetchedAt > TOKEN_RETRY_MS;
    if (tokenStale() || (!socket.isConnected() && due)) fetchToken().catch(() => {});
  });

  const channel = socket.channel(topic, () => ({ offset: state.lastPosition }));
  state.channel = channel;
  channel.onMessage = (event, payload, ref) => {
    if (typeof ref === "string" && ref.startsWith("p:")) {
      // A new epoch mid-stream (the gateway sends phx_error first, so
      // this is a safety net): the old round numbers are void.
      if (state.lastPosition !== null && epochOf(ref) !== epochOf(state.lastPosition)) startOver();
      state.lastPosition = ref;
      $("position").textContent = ref;
    }
    return payload;
  };
  channel.on("round_result", addResult);
  channel.onError(() => setConn("disconnected", "disconnected, will rejoin"));

  const presence = new Presence(channel);
  presence.onSync(() => renderPlayers(presence));

  channel
    .join()
    .receive("ok", (r) => {
      state.joins++;
      state.balance = r.balance;
      state.openRoundAtJoin = r.round ? r.round.id : 0;
      state.recovered = r.recovered ?? null;
      // A resume that recovered gets the missed events replayed next, each
      // moving the position on; otherwise start from the topic's top, and
      // over with the rounds when the history is lost.
      const epochChanged = state.lastPosition !== null && r.position != null && epochOf(r.position) !== epochOf(state.lastPosition);
      if (r.recovered === false || epochChanged) startOver();
      if (state.lastPosition === null || r.recovered === false || epochChanged) state.lastPosition = r.position ?? null;
      $("position").textContent = state.lastPosition ?? "—";
      renderBalance();
      setConn("joined", r.recovered === false ? `joined ${topic} (history lost: some rounds are missing)` : `joined ${topic}`);
    })
    .receive("error", (r) => setConn("error", `join refused: ${r.reason}`))
    .receive("timeout", () => setConn("error", "join timed out, retrying"));

  socket.connect();

  for (const btn of [$("bet-high"), $("bet-low")]) {
    btn.addEventListener("click", () => placeBet(channel, btn.dataset.pick));
  }
  $("bet-form").addEventListener("submit", (e) => e.preventDefault());

  const drop = $("drop");
  drop.textContent = `Drop the connection for ${Math.round(dropMs / 1000)} s`;
  drop.addEventListener("click", () => {
    drop.disabled = true;
    setConn("dropped", "dropped on purpose");
    socket.disconnect(() => {
      setTimeout(() => {
        socket.connect();
        drop.disabled = false;
      }, dropMs);
    });
  });
}

function placeBet(channel, pick) {
  const status = $("bet-status");
  const amount = $("amount").valueAsNumber;
  if (!Number.isInteger(amount) || amount < 1) {
    status.textContent = "Amount must be a whole number of chips, at least 1.";
    return;
  }
  status.textContent = `Betting ${amount} on ${pick}…`;
  channel
    .push("bet", { amount, pick })
    .receive("ok", (r) => {
      state.balance = r.balance;
      renderBalance();
      status.dataset.result = "ok";
      status.textContent = `Bet ${amount} on ${pick} placed (bet ${r.bet_id}).`;
    })
    .receive("error", (r) => {
      status.dataset.result = "error";
      status.textContent = `Bet refused: ${r.reason}${r.retry_after_ms ? ` (retry in ${r.retry_after_ms} ms)` : ""}.`;
    })
    .receive("timeout", () => {
      status.dataset.result = "timeout";
      status.textContent = "No answer to the bet yet (connection lost?).";
    });
}

main();
