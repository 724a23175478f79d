// The demo page of `phxgate --dev` in real Chromium, driven by
// playwright-core. devdemo_test.go starts the gateway, a TCP proxy in front
// of it that can reset every connection, and runs this script once per
// phase:
//
//   node browser/devdemo.mjs play      two players, bets, a TCP reset, the
//                                      page's own drop control
//   node browser/devdemo.mjs longpoll  a page with no WebSocket plays over
//                                      long-poll next to a WebSocket one
//
// Environment: PHXGATE_HTTP (the gateway's base URL), PHXGATE_HTTP_PROXIED
// (the same gateway through the proxy: bob's way in), PROXY_CONTROL
// (POST /reset?ms=N resets every proxied connection and refuses new ones
// for N ms), CHROMIUM (the browser binary), SCREENSHOTS
// (directory for the PNGs), DEMO_ROUND_MS (the gateway's demo_round).
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdirSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";

const direct = need("PHXGATE_HTTP");
const proxied = need("PHXGATE_HTTP_PROXIED");
const control = need("PROXY_CONTROL");
const shots = need("SCREENSHOTS");
const roundMs = Number(process.env.DEMO_ROUND_MS || "1000");
const phase = process.argv[2];
mkdirSync(shots, { recursive: true });

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (devdemo_test.go sets it)`);
  return v;
}

const log = (...a) => console.log(`[${phase}]`, ...a);

// waitFor polls cond (an async function returning a truthy value) until
// it holds or timeoutMs passes.
async function waitFor(what, cond, timeoutMs = 20000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await cond();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what} (last: ${last instanceof Error ? last.message : JSON.stringify(last)})`);
    await new Promise((ok) => setTimeout(ok, 50));
  }
}

const browser = await chromium.launch({
  executablePath: need("CHROMIUM"),
  headless: true,
  // Chromium's sandbox needs user namespaces, which containers running as
  // root usually lack.
  args: process.getuid && process.getuid() === 0 ? ["--no-sandbox"] : [],
});

// open starts a browser context (its own cookies and storage: another
// player) on the demo page, recording what it loads and what it sends.
async function open(player, table, { noWebSocket = false, extra = "", base = direct } = {}) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 760 } });
  if (noWebSocket) {
    // As in a browser behind a proxy that strips WebSocket: phoenix.js
    // then picks LongPoll on its own.
    await context.addInitScript(() => {
      delete window.WebSocket;
    });
  }
  const page = await context.newPage();
  const rec = { player, page, context, origin: new URL(base).origin, requests: [], sent: [], errors: [] };
  page.on("request", (r) => rec.requests.push(r.url()));
  page.on("pageerror", (e) => rec.errors.push(String(e)));
  page.on("console", (m) => {
    if (m.type() === "error") rec.errors.push(m.text());
  });
  page.on("websocket", (ws) => ws.on("framesent", (f) => rec.sent.push(String(f.payload))));
  page.on("request", (r) => {
    if (r.method() === "POST") rec.sent.push(r.postData() || "");
  });
  await page.goto(`${base}/?player=${player}&table=${table}${extra}`);
  return rec;
}

const demo = (rec) => rec.page.evaluate(() => {
  const s = window.diceDemo;
  return s && { balanceText: document.getElementById("balance").textContent, joins: s.joins, startOvers: s.startOvers, openRoundAtJoin: s.openRoundAtJoin, disconnects: s.disconnects, gaps: s.gaps, duplicates: s.duplicates, lastRound: s.lastRound, balance: s.balance, recovered: s.recovered, lastPosition: s.lastPosition, results: s.results };
});

const text = (rec, sel) => rec.page.locator(sel).innerText();

async function joined(rec, transport) {
  await waitFor(`${rec.player} joined over ${transport}`, async () => {
    const el = rec.page.locator("#conn-state");
    if ((await el.getAttribute("data-state")) === "joined") return true;
    throw new Error(`connection state: "${await el.innerText()}", transport: "${await text(rec, "#transport")}"`);
  });
  assert.equal(await text(rec, "#transport"), transport, `${rec.player}'s transport`);
}

async function seesPlayers(rec, names) {
  await waitFor(`${rec.player} sees ${names}`, async () => {
    const shown = await rec.page.locator("#players li").evaluateAll((els) => els.map((e) => e.dataset.player));
    return names.every((n) => shown.includes(n)) && shown;
  });
}

// bet fills Amount and clicks the button named pick; a click that lands
// between two rounds (betting_closed) is clicked again.
async function bet(rec, amount, pick) {
  const page = rec.page;
  for (let i = 0; i < 5; i++) {
    await page.getByLabel("Amount").fill(String(amount));
    const before = rec.sent.length;
    await page.getByRole("button", { name: new RegExp(pick, "i") }).click();
    const status = page.locator("#bet-status");
    await waitFor(`${rec.player}'s bet answer`, async () => (await status.getAttribute("data-result")) && (await status.innerText()).match(/placed|refused/));
    // The push went out at once, the amount a JSON number.
    const frame = rec.sent.slice(before).find((f) => f.includes('"bet"'));
    assert.ok(frame, `${rec.player}'s bet frame was not seen on the wire`);
    assert.ok(frame.includes(`{"amount":${amount},"pick":"${pick.toLowerCase()}"}`), `bet frame ${frame}`);
    const msg = await status.innerText();
    if (msg.includes("placed")) return msg;
    assert.match(msg, /betting_closed/, `bet refused: ${msg}`);
    await page.locator("#bet-status").evaluate((e) => delete e.dataset.result);
  }
  throw new Error("every bet landed between two rounds");
}

// checkResults checks that two pages agree on every round both saw, that
// each page's rounds are contiguous (nothing missed) and that no round
// reached a page twice (the page counts what it drops as seen already),
// and returns how many rounds both saw.
function checkResults(a, b, what) {
  for (const d of [a, b]) {
    const rounds = d.results.map((r) => r.round);
    for (let i = 1; i < rounds.length; i++) assert.equal(rounds[i], rounds[i - 1] + 1, `${what}: rounds not contiguous: ${rounds}`);
    assert.equal(d.gaps, 0, `${what}: gaps`);
    assert.equal(d.duplicates, 0, `${what}: rounds delivered twice (rounds ${rounds})`);
    for (const r of d.results) {
      assert.ok(Number.isInteger(r.round) && r.round > 0, `round ${r.round}`);
      assert.ok(r.roll >= 1 && r.roll <= 6, `roll ${r.roll}`);
      assert.equal(typeof r.payouts, "object");
      assert.ok(r.payouts !== null && !Array.isArray(r.payouts), "payouts is an object");
    }
  }
  const byRound = new Map(b.results.map((r) => [r.round, r]));
  let common = 0;
  for (const r of a.results) {
    if (!byRound.has(r.round)) continue;
    assert.deepEqual(byRound.get(r.round), r, `${what}: round ${r.round} differs`);
    common++;
  }
  return common;
}

// shows checks the balance a page shows after one bet: base (the start
// less the bet) plus what the results it saw paid its player, who bet
// nowhere else (a round may roll between the bet's reply and the check).
function shows(d, base, player) {
  const won = d.results.reduce((n, x) => n + (x.payouts[player] || 0), 0);
  assert.equal(d.balanceText, String(base + won), `${player}'s balance shown (results ${JSON.stringify(d.results)})`);
}

// bothSee is a round such that each page has seen (or will) it and the
// round before it: each page sees every round opened after its join, so
// whichever page joined last (under load a page opened first can start
// the table and see round 1 roll before the other joins) sees the round
// after the one open at its join, and the next.
const bothSee = (...ds) => Math.max(...ds.map((d) => d.openRoundAtJoin)) + 2;

// summary describes a page's state for a failure message.
const summary = (d) =>
  `rounds [${d.results.map((r) => r.round)}], lastRound ${d.lastRound}, joins ${d.joins}, disconnects ${d.disconnects}, recovered ${d.recovered}, position ${d.lastPosition}`;

async function shot(rec, name) {
  const path = join(shots, name);
  await rec.page.screenshot({ path, fullPage: true });
  log("screenshot", path);
}

async function reset(ms) {
  const r = await fetch(`${control}/reset?ms=${ms}`, { method: "POST" });
  const body = await r.text();
  assert.equal(r.status, 200, `proxy reset: ${body}`);
  return JSON.parse(body).reset;
}

function onlyOwnOrigin(rec) {
  for (const u of rec.requests) {
    const o = rec.origin;
    assert.ok(u.startsWith(o + "/") || u.startsWith(o.replace(/^http/, "ws") + "/") || u.startsWith("data:"), `${rec.player} loaded ${u} from elsewhere`);
  }
  assert.deepEqual(rec.errors.filter((e) => !/ERR_CONNECTION|WebSocket|Failed to load resource|net::/.test(e)), [], `${rec.player}'s page errors`);
}

async function play() {
  const table = `b${randomBytes(3).toString("hex")}`;
  const alice = await open("alice", table, { extra: "&drop_ms=" + 3 * roundMs });
  const bob = await open("bob", table, { base: proxied });
  await joined(alice, "websocket");
  await joined(bob, "websocket");
  await seesPlayers(alice, ["alice", "bob"]);
  await seesPlayers(bob, ["alice", "bob"]);
  log("alice and bob see each other");

  assert.equal(await text(alice, "#balance"), "1000");
  const lastBefore = (await demo(alice)).lastRound;
  const msg = await bet(alice, 25, "High");
  log("alice:", msg);
  const afterBet = await demo(alice);
  // Her balance less the bet, plus what a round rolled since paid her.
  shows(afterBet, 975, "alice");
  // The round she bet in rolls; both see it, and her balance settles.
  // Rounds roll while the bet is on its way, and a result may be on its
  // way when the reply comes: her round is after lastBefore and at most
  // two past the last result she had after the reply.
  const lastCandidate = afterBet.lastRound + 2;
  const until = Math.max(lastCandidate, bothSee(afterBet, await demo(bob)));
  await waitFor("the round alice bet in", async () => (await demo(bob)).lastRound >= until && (await demo(alice)).lastRound >= until);
  const a = await demo(alice);
  const b = await demo(bob);
  assert.ok(checkResults(a, b, "before the reset") >= 2, "alice and bob share fewer than 2 rounds");
  // alice bet once: her balance is what she had, less the bet, plus
  // whatever the results paid her.
  const won = a.results.reduce((n, x) => n + (x.payouts.alice || 0), 0);
  assert.equal(a.balance, 975 + won, "alice's balance after her round");
  assert.ok(won === 0 || won === 50, `alice won ${won} on a 25 chip bet`);
  const paid = a.results.filter((x) => x.payouts.alice).map((x) => x.round);
  const candidates = a.results.filter((x) => x.round > lastBefore && x.round <= lastCandidate);
  assert.ok(candidates.length > 0, `no result for rounds ${lastBefore + 1}..${lastCandidate}`);
  if (candidates.every((x) => x.roll >= 4)) assert.equal(won, 50, `alice bet high before rolls ${candidates.map((x) => x.roll)}`);
  if (candidates.every((x) => x.roll <= 3)) assert.equal(won, 0, `alice bet high before rolls ${candidates.map((x) => x.roll)}`);
  if (won) assert.ok(candidates.some((x) => x.round === paid[0] && x.roll >= 4), `alice paid in round ${paid}`);
  await shot(alice, "alice.png");
  await shot(bob, "bob.png");

  // A TCP reset of bob's connections, and no way back for longer than a
  // round (alice stays, so the table rolls on): bob's phoenix.js reconnects by itself, rejoins from its last
  // position and is replayed the rounds it missed.
  const before = await demo(bob);
  const n = await reset(3 * roundMs);
  log(`proxy reset ${n} connections`);
  assert.ok(n >= 1, "the proxy reset none of bob's connections");
  await waitFor("bob reconnected and rejoined", async () => {
    const d = await demo(bob);
    return d.joins > before.joins && d.disconnects > before.disconnects;
  }, 30000);
  const target = (await demo(alice)).lastRound + 1;
  await waitFor("bob caught up", async () => (await demo(bob)).lastRound >= target && (await demo(alice)).lastRound >= target, 20000);
  const aa = await demo(alice);
  const bb = await demo(bob);
  assert.equal(bb.recovered, true, "bob's resume recovered");
  assert.ok(bb.lastRound - before.lastRound >= 3, `bob missed no round of the outage (rounds ${before.lastRound} → ${bb.lastRound})`);
  checkResults(aa, bb, "after the TCP reset");
  await joined(bob, "websocket");
  await shot(bob, "bob-after-reset.png");
  log(`after the reset bob has rounds ${bb.results[0].round}..${bb.lastRound}, no gap`);

  // The page's own control: a clean drop, away for three rounds.
  const beforeDrop = await demo(alice);
  await alice.page.getByRole("button", { name: /Drop the connection/ }).click();
  await waitFor("alice dropped", async () => (await alice.page.locator("#conn-state").getAttribute("data-state")) !== "joined");
  await waitFor("alice back", async () => (await demo(alice)).joins > beforeDrop.joins, 20000);
  const target2 = (await demo(bob)).lastRound + 1;
  await waitFor("alice caught up", async () => (await demo(alice)).lastRound >= target2, 20000);
  const a3 = await demo(alice);
  assert.equal(a3.recovered, true, "alice's resume recovered");
  assert.ok(a3.lastRound - beforeDrop.lastRound >= 3, `alice missed no round of the drop (${beforeDrop.lastRound} → ${a3.lastRound})`);
  checkResults(a3, await demo(bob), "after the drop");
  await joined(alice, "websocket");
  await seesPlayers(alice, ["alice", "bob"]);
  await shot(alice, "demo.png");

  // A rejoin that cannot recover, as after a gateway restart: alice's page
  // holds a position of another epoch and round numbers of a former life
  // of the table (which counts from 1 again after a restart). Told
  // recovered: false, the page starts its rounds over instead of dropping
  // every round up to its old last one.
  const beforeLoss = await demo(alice);
  await alice.page.evaluate(() => {
    const s = window.diceDemo;
    s.lastRound += 1000;
    s.lastPosition = "p:formerlife:3";
    s.socket.disconnect(() => s.socket.connect());
  });
  await waitFor("alice rejoined without her history", async () => {
    const d = await demo(alice);
    return d.joins > beforeLoss.joins && d.recovered === false;
  });
  const target3 = (await demo(bob)).lastRound + 1;
  // (Her lastRound is no measure here: it was raised by 1000.)
  await waitFor("alice shows rounds again", async () => (await demo(alice)).results.some((r) => r.round >= target3), 20000);
  const a4 = await demo(alice);
  assert.equal(a4.startOvers, beforeLoss.startOvers + 1, "alice's rounds started over once");
  assert.ok(a4.results[0].round > beforeLoss.lastRound, `alice's rounds after the loss ${a4.results.map((r) => r.round)}`);
  checkResults(a4, await demo(bob), "after a lost history");
  await joined(alice, "websocket");
  onlyOwnOrigin(alice);
  onlyOwnOrigin(bob);
}

async function longpoll() {
  const table = `lp${randomBytes(3).toString("hex")}`;
  const carol = await open("carol", table, { noWebSocket: true });
  await joined(carol, "longpoll");
  // dave comes to a table that has rolled already: rounds before his join
  // are carol's alone.
  await waitFor("a round rolled at carol's table", async () => (await demo(carol)).lastRound >= 1);
  const dave = await open("dave", table);
  await joined(dave, "websocket");
  await seesPlayers(carol, ["carol", "dave"]);
  await seesPlayers(dave, ["carol", "dave"]);
  log("carol plays over", await text(carol, "#transport"));
  const msg = await bet(carol, 10, "Low");
  log("carol:", msg);
  shows(await demo(carol), 990, "carol");
  // Two rounds past dave's last, and two rounds both pages see: carol's
  // page, opened first, may start the table and see round 1 roll before
  // dave joins.
  const target = Math.max((await demo(dave)).lastRound + 2, bothSee(await demo(carol), await demo(dave)));
  await waitFor("carol sees the rounds", async () => (await demo(carol)).lastRound >= target && (await demo(dave)).lastRound >= target);
  const c = await demo(carol);
  const d = await demo(dave);
  const common = checkResults(c, d, "long-poll");
  assert.ok(common >= 2, `carol (long-poll) and dave share ${common} rounds (target ${target}): carol ${summary(c)}; dave ${summary(d)}`);
  await shot(carol, "carol-longpoll.png");
  onlyOwnOrigin(carol);
}

// A developer restarts phxgate: a new process with a new dev secret, so
// the page's token is refused. The page fetches a fresh token by itself,
// rejoins, starts its rounds over (the history is gone) and plays on.
async function restart() {
  const table = `rs${randomBytes(3).toString("hex")}`;
  const erin = await open("erin", table);
  await joined(erin, "websocket");
  await waitFor("erin sees a round", async () => (await demo(erin)).lastRound >= 1);
  const before = await demo(erin);
  const r = await fetch(`${control}/restart`, { method: "POST" });
  assert.equal(r.status, 200, `restart: ${await r.text()}`);
  log("phxgate restarted");
  await waitFor("erin back after the restart", async () => {
    const d = await demo(erin);
    return d.joins > before.joins && (await erin.page.locator("#conn-state").getAttribute("data-state")) === "joined";
  }, 30000);
  const back = await demo(erin);
  assert.equal(back.recovered, false, "the restarted node has no history: recovered false");
  await waitFor("erin sees rounds again", async () => (await demo(erin)).results.length >= 1, 20000);
  const after = await demo(erin);
  assert.ok(after.startOvers >= 1, `erin's page started its rounds over (${summary(after)})`);
  checkResults(after, after, "after the restart");
  const msg = await bet(erin, 10, "High");
  log("erin:", msg);
  await shot(erin, "erin-restart.png");
}

try {
  if (phase === "play") await play();
  else if (phase === "longpoll") await longpoll();
  else if (phase === "restart") await restart();
  else throw new Error(`unknown phase ${phase}: play, longpoll or restart`);
  log("ok");
} finally {
  await browser.close();
}
