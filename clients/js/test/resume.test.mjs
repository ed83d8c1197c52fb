// The client keeps its session against the chat example (started by the
// Rust test `tests/js/client_lib.rs`, which sets CHAT_CONTROL): after a
// dropped connection, through a connector's drain, with a stale token, and
// while the store cannot confirm a resume.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { ClientError } from '../dist/index.js';
import { WAIT, cluster, control, directClient, enter, gateClient, next, proxy, pushes } from '../test-support/cluster.mjs';

let c;
before(async () => {
  assert(process.env.CHAT_CONTROL, 'CHAT_CONTROL is set by tests/js/client_lib.rs');
  c = await cluster();
});

// Whatever a test opened is closed after it, even when it fails.
const open = [];
after(async () => {
  for (const x of open) await x.close();
});
function keep(x) {
  open.push(x);
  return x;
}

test('a dropped connection comes back as the same session, still in its room', async () => {
  const p = keep(await proxy(c.host, c.connectors[0]));
  const ann = keep(directClient('127.0.0.1', p.port));
  const bob = keep(directClient(c.host, c.connectors[0]));
  const first = await ann.connect();
  assert.equal(first.resumed, false);
  await enter(ann, 'ann', 'drop');
  await bob.connect();
  const bobSaw = pushes(bob);
  await enter(bob, 'bob', 'drop');
  const tokenBefore = ann.token;

  const back = next(ann, 'session');
  const reconnecting = next(ann, 'reconnecting');
  p.cut();
  const [attempt] = await reconnecting;
  assert.equal(attempt.attempt, 1);
  const [session] = await back;
  assert.equal(session.resumed, true, 'the same session came back');
  assert.equal(ann.resumed, true);
  assert.notEqual(ann.token, tokenBefore, 'a fresh token for the next time');

  // Still in the room: bob hears ann, and never heard her leave.
  const heard = next(bob, 'push', (route, body) => route === 'onChat' && body.msg === 'back again');
  const answer = await ann.request('chat.chatHandler.send', { rid: 'drop', content: 'back again', from: 'ann', target: '*' });
  assert.deepEqual(answer, { route: 'chat.chatHandler.send' });
  const [, said] = await heard;
  assert.equal(said.from, 'ann');
  assert.deepEqual(bobSaw.filter((x) => x.route === 'onLeave'), []);
});

test('a stale token gives a fresh session, and the client says so', async () => {
  const storage = new Map();
  const sessionStorage = {
    getItem: (k) => storage.get(k) ?? null,
    setItem: (k, v) => void storage.set(k, v),
    removeItem: (k) => void storage.delete(k),
  };
  sessionStorage.setItem('game', JSON.stringify({ host: c.host, port: c.connectors[1], token: 'not-a-token' }));
  const cat = keep(directClient(c.host, c.connectors[1], { storage: sessionStorage, storageKey: 'game' }));
  const session = await cat.connect();
  assert.equal(session.resumed, false);
  assert.equal(typeof session.refused, 'string', 'the server says why');
  assert.equal(cat.resumed, false);
  const saved = JSON.parse(storage.get('game'));
  assert.notEqual(saved.token, 'not-a-token');
  assert.equal(saved.token, cat.token);
  // A working session: the game logs in again.
  assert.deepEqual(await enter(cat, 'cat', 'stale'), ['cat']);
  cat.close();
  assert.equal(storage.get('game'), undefined, 'close() forgets the token');
});

test('requests made while reconnecting fail at once when the game asks for it', async () => {
  const p = keep(await proxy(c.host, c.connectors[0]));
  const fay = keep(directClient('127.0.0.1', p.port, { whileReconnecting: 'fail', reconnect: { attempts: 3, minDelay: 2000, maxDelay: 2000 } }));
  await fay.connect();
  const reconnecting = next(fay, 'reconnecting');
  p.cut();
  await reconnecting;
  assert.equal(fay.state, 'reconnecting');
  await assert.rejects(fay.request('chat.chatHandler.send', { content: 'x', target: '*' }), (err) => err instanceof ClientError && err.kind === 'reconnecting');
  fay.close();
  assert.equal(fay.state, 'closed');
  await assert.rejects(fay.request('chat.chatHandler.send', {}), (err) => err.kind === 'closed');
});

test('a resume the store cannot confirm is refused for now, and the client keeps its token', async () => {
  const p = keep(await proxy(c.host, c.connectors[1]));
  const dee = keep(directClient('127.0.0.1', p.port, { reconnect: { attempts: 60, minDelay: 50, maxDelay: 500 } }));
  await dee.connect();
  await enter(dee, 'dee', 'hold');
  const token = dee.token;

  // Before the drain below, while both connectors serve. The store stops
  // answering: the connector cannot tell whether another
  // one claimed the session, so it refuses the resume with "retry".
  await control('POST', '/redis/pause');
  try {
    const retried = next(dee, 'reconnecting', (e) => e.attempt >= 3);
    p.cut();
    await retried;
    assert.equal(dee.token, token, 'the token is kept through refusals that say retry');
  } finally {
    await control('POST', '/redis/resume');
  }
  const [session] = await next(dee, 'session');
  assert.equal(session.resumed, true, 'the same session came back once the store answered');
  const answer = await dee.request('chat.chatHandler.send', { rid: 'hold', content: 'back', from: 'dee', target: '*' });
  assert.deepEqual(answer, { route: 'chat.chatHandler.send' });
});

test('a drained connector: every request answered or failed with a typed error, the session resumed on the other', async () => {
  const dan = keep(gateClient(c, 'dan'));
  const first = await dan.connect();
  const from = first.port;
  const drained = c.connectors.indexOf(from);
  assert.notEqual(drained, -1, `the gate handed out a connector: ${from}`);
  await enter(dan, 'dan', 'drain');
  // A listener on the other connector, in the same room.
  const other = c.connectors[1 - drained];
  const eve = keep(directClient(c.host, other));
  await eve.connect();
  const eveSaw = pushes(eve);
  await enter(eve, 'eve', 'drain');

  // Requests run back to back while the connector drains under them.
  const outcomes = [];
  let running = true;
  const writer = (async () => {
    // Under the chat's rate limit (5 a second per session).
    for (let i = 0; running && i < 1000; i++) {
      await new Promise((r) => setTimeout(r, 220));
      try {
        const answer = await dan.request('chat.chatHandler.send', { rid: 'drain', content: `m${i}`, from: 'dan', target: '*' });
        outcomes.push(answer && answer.route === 'chat.chatHandler.send' ? 'ok' : `answered ${JSON.stringify(answer)}`);
      } catch (err) {
        assert(err instanceof ClientError, `a typed error, not ${err}`);
        outcomes.push(err.kind);
      }
    }
  })();
  const moved = next(dan, 'session');
  const report = await control('POST', `/drain/${drained}`);
  assert.equal(report.complete, true, JSON.stringify(report));
  assert.equal(report.kicked >= 1, true, JSON.stringify(report));
  const [session] = await moved;
  assert.equal(session.resumed, true, 'the session came back');
  assert.equal(session.port, other, 'on the other connector');
  // A few more requests after the move, then stop.
  const after = outcomes.length;
  const deadline = Date.now() + WAIT;
  while (outcomes.length < after + 5 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  running = false;
  await writer;

  assert(outcomes.length > 5, `requests ran: ${outcomes.length}`);
  const failed = outcomes.filter((o) => o !== 'ok');
  for (const kind of failed) assert.equal(kind, 'lost', `only a request in flight at the cut may fail: ${failed}`);
  assert(failed.length <= 1, `at most the one in flight failed: ${failed}`);
  assert.deepEqual(outcomes.slice(-5), ['ok', 'ok', 'ok', 'ok', 'ok'], 'the requests after the move are answered');
  const sessions = await control('GET', '/sessions');
  assert(sessions[1 - drained].includes('dan*drain'), JSON.stringify(sessions));
  // Still in the room: eve hears dan, and never heard him leave.
  const heard = next(eve, 'push', (route, body) => route === 'onChat' && body.msg === 'moved');
  await dan.request('chat.chatHandler.send', { rid: 'drain', content: 'moved', from: 'dan', target: '*' });
  await heard;
  assert.deepEqual(eveSaw.filter((x) => x.route === 'onLeave'), []);
});

