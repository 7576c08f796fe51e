// node-postgres through Sluice in transaction mode: several concurrent clients using named
// queries ({ name, text, values }: Parse once per connection, then Bind by name), in and
// out of transactions, plus a pg.Pool. Every client uses the same names ('q1'...), some
// with different texts. Usage: node named_queries.js URL [CLIENTS] [ROUNDS]; exit 0 = ok.
'use strict';

const assert = require('assert');
const { Client, Pool } = require('pg');

const url = process.argv[2];
const clients = Number(process.argv[3] || 12);
const rounds = Number(process.argv[4] || 40);

async function setup() {
  const c = new Client({ connectionString: url });
  await c.connect();
  await c.query('DROP TABLE IF EXISTS node_items, node_log');
  await c.query('CREATE TABLE node_items (id int PRIMARY KEY, name text, score float8)');
  await c.query("INSERT INTO node_items SELECT g, 'item ' || g, g * 0.5 FROM generate_series(1, 100) g");
  await c.query('CREATE TABLE node_log (client int, n int)');
  await c.end();
}

async function worker(k) {
  const c = new Client({ connectionString: url, application_name: `node-${k}` });
  await c.connect();
  try {
    // Same name in every client; the text differs between odd and even clients.
    const q1 = k % 2 === 0 ? 'SELECT $1::int * 2 AS v' : 'SELECT $1::int * 2 + 1 AS v';
    for (let i = 0; i < rounds; i++) {
      let r = await c.query({ name: 'q1', text: q1, values: [i] });
      assert.strictEqual(r.rows[0].v, k % 2 === 0 ? i * 2 : i * 2 + 1);
      const id = ((k * 3 + i) % 100) + 1;
      r = await c.query({ name: 'lookup', text: 'SELECT id, name, score FROM node_items WHERE id = $1', values: [id] });
      assert.deepStrictEqual(r.rows[0], { id, name: `item ${id}`, score: id * 0.5 });
      r = await c.query({ name: 'app', text: "SELECT current_setting('application_name') AS a", values: [] });
      assert.strictEqual(r.rows[0].a, `node-${k}`);
      if (i % 5 === 0) {
        await c.query('BEGIN');
        await c.query({ name: 'ins', text: 'INSERT INTO node_log VALUES ($1, $2)', values: [k, i] });
        r = await c.query({ name: 'cnt', text: 'SELECT count(*)::int AS n FROM node_log WHERE client = $1', values: [k] });
        assert.strictEqual(r.rows[0].n, i / 5 + 1);
        r = await c.query({ name: 'q1', text: q1, values: [1] });
        assert.strictEqual(r.rows[0].v, k % 2 === 0 ? 2 : 3);
        await c.query('COMMIT');
      }
      if (i % 7 === 3) {
        // A Parse error on a named query: reported, the connection stays usable.
        await assert.rejects(c.query({ name: `bad${i}`, text: 'SELEC 1', values: [] }), (e) => e.code === '42601');
        await c.query('BEGIN');
        await c.query({ name: 'ins', text: 'INSERT INTO node_log VALUES ($1, $2)', values: [k, -1] });
        await assert.rejects(c.query({ name: 'div', text: 'SELECT 1 / $1::int', values: [0] }), (e) => e.code === '22012');
        await c.query('ROLLBACK');
      }
    }
    const r = await c.query({ name: 'cnt', text: 'SELECT count(*)::int AS n FROM node_log WHERE client = $1', values: [k] });
    assert.strictEqual(r.rows[0].n, Math.ceil(rounds / 5));
  } finally {
    await c.end();
  }
}

async function poolUsers() {
  const pool = new Pool({ connectionString: url, max: 4 });
  try {
    await Promise.all(Array.from({ length: 8 }, async (_, k) => {
      for (let i = 0; i < rounds / 2; i++) {
        const r = await pool.query({ name: 'pq', text: 'SELECT $1::int + 100 AS v', values: [i + k] });
        assert.strictEqual(r.rows[0].v, i + k + 100);
      }
    }));
  } finally {
    await pool.end();
  }
}

async function main() {
  await setup();
  await Promise.all(Array.from({ length: clients }, (_, k) => worker(k)));
  await poolUsers();
  console.log(`node-postgres: ${clients} clients x ${rounds} rounds ok`);
}

const timer = setTimeout(() => { console.error('timeout after 240 s'); process.exit(2); }, 240000);
main().then(() => { clearTimeout(timer); }, (e) => { console.error(e); process.exit(1); });
