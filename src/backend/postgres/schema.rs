//! The tables and functions of a Postgres store, in their own schema (option `schema`,
//! default `durastate`), created on first use; `meta.version` records the format so a
//! later release can migrate. Shaped as the SQLite file is (`backend/sqlite/schema.rs`):
//! - `entries`: strings by full key (KV entries, execution markers), with an optional
//!   absolute expiry in ms (the server's clock), indexed where set;
//! - `steps`: one row per (execution, task): its in-progress mark and its result;
//! - `step_expiry`: for executions stored with a TTL, when all their marks and all their
//!   results expire, as the two Redis hashes do; the sweep finds them by `sweep_at`, a
//!   lower bound of both that refreshing a TTL leaves alone (so the refresh is a HOT
//!   update of one row: no index entry, a small WAL record).
//!
//! Keys and values are `text` with the `"C"` collation (byte order: key ranges and
//! `keys(pattern)` prefixes are index ranges), values JSON *text* (never `jsonb`, which
//! reorders keys). The step operations that read before they write are PL/pgSQL
//! functions, so each store call is one statement and one round trip. The claim and the
//! commit are one plain statement each (`ops.rs`) that calls its function only when the
//! execution's `step_expiry` row needs it (something of it expired; without a TTL, any).
//!
//! Format 3 (the tables of format 2): `claims_at` may outlive the marks. A commit with a
//! TTL that takes the last mark leaves it (so that it is one statement that reads no
//! other step); it is stale, and read as nothing once no mark is left (a claim without
//! a TTL drops it first). Format 2 moves to 3 by replacing the functions.

use tokio_postgres::Client;

use crate::error::{ErrorCode, StoreError, StoreResult};

/// The format this build writes.
pub const VERSION: i32 = 3;

/// `name` as a quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
  format!("\"{}\"", name.replace('"', "\"\""))
}

/// A schema name Postgres takes: 1 to 63 bytes, no NUL.
/// `$` is refused too: the name is also written inside the `$$`-quoted bodies of the
/// schema's functions, where `$$` in it would end the body.
pub fn check_schema_name(name: &str) -> StoreResult<()> {
  if name.is_empty() || name.len() > 63 || name.contains('\0') || name.contains('$') {
    return Err(StoreError::invalid_input(format!(
      "option `schema` must be 1 to 63 bytes without NUL or `$`, got \"{}\"",
      name.escape_debug()
    )));
  }
  // Postgres refuses to create a schema named `pg_...` (42939): reserved for its own.
  if name.starts_with("pg_") {
    return Err(StoreError::invalid_input(format!(
      "option `schema`: \"{}\" starts with `pg_`, which Postgres reserves for its system schemas",
      name.escape_debug()
    )));
  }
  Ok(())
}

/// The relations this store creates in its schema (tables and indexes), besides `meta`.
const OWN_RELATIONS: [&str; 6] = [
  "entries",
  "entries_expiry",
  "steps",
  "step_expiry",
  "step_expiry_sweep",
  "step_expiry_pkey",
];

fn tables(s: &str) -> String {
  format!(
    r#"
CREATE TABLE IF NOT EXISTS {s}.entries (
  key text COLLATE "C" PRIMARY KEY,
  value text NOT NULL,
  expires_at bigint
);
CREATE INDEX IF NOT EXISTS entries_expiry ON {s}.entries (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS {s}.steps (
  exec text COLLATE "C" NOT NULL,
  task text COLLATE "C" NOT NULL,
  claim text,
  result text,
  PRIMARY KEY (exec, task)
);
CREATE TABLE IF NOT EXISTS {s}.step_expiry (
  exec text COLLATE "C" PRIMARY KEY,
  claims_at bigint,
  results_at bigint,
  sweep_at bigint
) WITH (fillfactor = {EXPIRY_FILLFACTOR});
CREATE INDEX IF NOT EXISTS step_expiry_sweep ON {s}.step_expiry (sweep_at) WHERE sweep_at IS NOT NULL;
"#
  )
}

/// Version 1 indexed `claims_at` and `results_at` (partial indexes), so that every write
/// that refreshed a TTL was a non-HOT update with index insertions; version 2 indexes
/// `sweep_at` instead, a lower bound of both that a refresh rarely moves.
fn migrate_v1(s: &str) -> String {
  format!(
    r#"
ALTER TABLE {s}.step_expiry ADD COLUMN IF NOT EXISTS sweep_at bigint;
UPDATE {s}.step_expiry SET sweep_at = least(claims_at, results_at);
CREATE INDEX IF NOT EXISTS step_expiry_sweep ON {s}.step_expiry (sweep_at) WHERE sweep_at IS NOT NULL;
DROP INDEX IF EXISTS {s}.step_expiry_claims;
DROP INDEX IF EXISTS {s}.step_expiry_results;
ALTER TABLE {s}.step_expiry SET (fillfactor = {EXPIRY_FILLFACTOR});
"#
  )
}

/// Room left in `step_expiry`'s pages for the new versions of refreshed rows (HOT updates).
const EXPIRY_FILLFACTOR: u32 = 50;

/// The functions; `CREATE OR REPLACE` with the signatures version 1 had, so that a process
/// of a previous release still running after a migration calls these (their semantics
/// are format 3's: a stale `claims_at` is dropped before a mark without a TTL). The ones whose
/// statements look rows up by a key prefix or a range run with `enable_seqscan = off`:
/// PL/pgSQL keeps a generic plan per connection, and one planned while the tables were
/// nearly empty was a sequential scan of `steps` (240 µs of a 470 µs commit at 64 in
/// flight), which on a large table would be a full scan per call.
fn functions(s: &str) -> String {
  format!(
    r#"
CREATE OR REPLACE FUNCTION {s}.now_ms() RETURNS bigint LANGUAGE sql VOLATILE AS
$$ SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint $$;

-- Sets (or, both NULL, removes) an execution's expiries; `sweep_at` exactly their minimum.
CREATE OR REPLACE FUNCTION {s}.store_expiry(p_exec text, p_claims bigint, p_results bigint)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
  IF p_claims IS NULL AND p_results IS NULL THEN
    DELETE FROM {s}.step_expiry WHERE exec = p_exec;
  ELSE
    INSERT INTO {s}.step_expiry (exec, claims_at, results_at, sweep_at)
    VALUES (p_exec, p_claims, p_results, least(p_claims, p_results))
    ON CONFLICT (exec) DO UPDATE SET claims_at = excluded.claims_at, results_at = excluded.results_at,
      sweep_at = excluded.sweep_at;
  END IF;
END $$;

-- Whether no step of the execution is marked in progress.
CREATE OR REPLACE FUNCTION {s}.no_marks(p_exec text) RETURNS boolean LANGUAGE sql STABLE
SET enable_seqscan = off AS
$$ SELECT NOT EXISTS (SELECT 1 FROM {s}.steps WHERE exec = p_exec AND claim IS NOT NULL) $$;

-- Removes what has expired of an execution before a write (so the write starts from
-- what Redis would hold); returns the expiries still in force.
CREATE OR REPLACE FUNCTION {s}.purge(p_exec text, p_now bigint, OUT o_claims bigint, OUT o_results bigint)
LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
  v_claims_gone boolean;
  v_results_gone boolean;
BEGIN
  SELECT e.claims_at, e.results_at INTO o_claims, o_results
    FROM {s}.step_expiry e WHERE e.exec = p_exec FOR UPDATE;
  IF NOT FOUND THEN RETURN; END IF;
  v_claims_gone := o_claims IS NOT NULL AND o_claims <= p_now;
  v_results_gone := o_results IS NOT NULL AND o_results <= p_now;
  IF NOT v_claims_gone AND NOT v_results_gone THEN RETURN; END IF;
  IF v_claims_gone THEN
    UPDATE {s}.steps SET claim = NULL WHERE exec = p_exec AND claim IS NOT NULL;
    o_claims := NULL;
  END IF;
  IF v_results_gone THEN
    UPDATE {s}.steps SET result = NULL WHERE exec = p_exec AND result IS NOT NULL;
    o_results := NULL;
  END IF;
  DELETE FROM {s}.steps WHERE exec = p_exec AND claim IS NULL AND result IS NULL;
  PERFORM {s}.store_expiry(p_exec, o_claims, o_results);
END $$;

-- Marks a step in progress; 1 when this call set the mark. A TTL (re)sets the expiry of
-- all the execution's marks, also when an exclusive claim lost (as MULTI HSETNX PEXPIRE).
-- The execution's expiry row is locked first, so that calls on one execution serialize;
-- what expired is purged only when something has (the common case reads one row).
CREATE OR REPLACE FUNCTION {s}.claim(p_exec text, p_task text, p_value text, p_exclusive boolean, p_ttl bigint)
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
  v_now bigint := {s}.now_ms();
  v_claims bigint;
  v_results bigint;
  v_found boolean;
  v_refreshed boolean := false;
  v_written integer;
BEGIN
  -- With a TTL and an expiry row of which nothing expired (the common case), refreshing
  -- it is what locks it.
  IF p_ttl IS NOT NULL THEN
    UPDATE {s}.step_expiry SET claims_at = v_now + p_ttl, sweep_at = least(sweep_at, v_now + p_ttl)
    WHERE exec = p_exec AND (claims_at IS NULL OR claims_at > v_now) AND (results_at IS NULL OR results_at > v_now);
    v_refreshed := FOUND;
  END IF;
  IF NOT v_refreshed THEN
    SELECT e.claims_at, e.results_at INTO v_claims, v_results
      FROM {s}.step_expiry e WHERE e.exec = p_exec FOR UPDATE;
    v_found := FOUND;
    IF v_found AND (v_claims <= v_now OR v_results <= v_now) THEN
      SELECT o_claims, o_results INTO v_claims, v_results FROM {s}.purge(p_exec, v_now);
      v_found := v_claims IS NOT NULL OR v_results IS NOT NULL;
    END IF;
    -- A commit with a TTL leaves the marks' expiry behind when it takes the last mark
    -- (version 3): it is stale, and a mark made without a TTL must not take it.
    IF p_ttl IS NULL AND v_claims IS NOT NULL AND {s}.no_marks(p_exec) THEN
      PERFORM {s}.store_expiry(p_exec, NULL, v_results);
      v_claims := NULL;
      v_found := v_results IS NOT NULL;
    END IF;
  END IF;
  IF p_exclusive THEN
    INSERT INTO {s}.steps AS s (exec, task, claim) VALUES (p_exec, p_task, p_value)
    ON CONFLICT (exec, task) DO UPDATE SET claim = excluded.claim WHERE s.claim IS NULL;
  ELSE
    INSERT INTO {s}.steps AS s (exec, task, claim) VALUES (p_exec, p_task, p_value)
    ON CONFLICT (exec, task) DO UPDATE SET claim = excluded.claim;
  END IF;
  GET DIAGNOSTICS v_written = ROW_COUNT;
  IF p_ttl IS NOT NULL AND NOT v_refreshed THEN
    IF v_found THEN
      UPDATE {s}.step_expiry SET claims_at = v_now + p_ttl, sweep_at = least(sweep_at, v_now + p_ttl)
      WHERE exec = p_exec;
    ELSE
      INSERT INTO {s}.step_expiry AS e (exec, claims_at, sweep_at) VALUES (p_exec, v_now + p_ttl, v_now + p_ttl)
      ON CONFLICT (exec) DO UPDATE SET claims_at = excluded.claims_at, sweep_at = least(e.sweep_at, excluded.sweep_at);
    END IF;
  END IF;
  RETURN v_written;
END $$;

-- Stores a step's result and clears its mark. A TTL (re)sets the expiry of all the
-- execution's results; marks that are all gone take their expiry with them.
CREATE OR REPLACE FUNCTION {s}.commit(p_exec text, p_task text, p_json text, p_ttl bigint)
RETURNS void LANGUAGE plpgsql SET enable_seqscan = off AS $$
DECLARE
  v_now bigint := {s}.now_ms();
  v_claims bigint;
  v_results bigint;
  v_found boolean;
BEGIN
  -- With a TTL and an expiry row of which nothing expired (the common case), refreshing
  -- it is what locks it; then the marks' expiry goes when the last mark has.
  IF p_ttl IS NOT NULL THEN
    UPDATE {s}.step_expiry SET results_at = v_now + p_ttl, sweep_at = least(sweep_at, v_now + p_ttl)
    WHERE exec = p_exec AND (claims_at IS NULL OR claims_at > v_now) AND (results_at IS NULL OR results_at > v_now)
    RETURNING claims_at INTO v_claims;
    IF FOUND THEN
      INSERT INTO {s}.steps AS s (exec, task, claim, result) VALUES (p_exec, p_task, NULL, p_json)
      ON CONFLICT (exec, task) DO UPDATE SET claim = NULL, result = excluded.result;
      IF v_claims IS NOT NULL THEN
        UPDATE {s}.step_expiry SET claims_at = NULL WHERE exec = p_exec
          AND NOT EXISTS (SELECT 1 FROM {s}.steps WHERE exec = p_exec AND claim IS NOT NULL);
      END IF;
      RETURN;
    END IF;
  END IF;
  SELECT e.claims_at, e.results_at INTO v_claims, v_results
    FROM {s}.step_expiry e WHERE e.exec = p_exec FOR UPDATE;
  v_found := FOUND;
  IF v_found AND (v_claims <= v_now OR v_results <= v_now) THEN
    SELECT o_claims, o_results INTO v_claims, v_results FROM {s}.purge(p_exec, v_now);
    v_found := v_claims IS NOT NULL OR v_results IS NOT NULL;
  END IF;
  INSERT INTO {s}.steps AS s (exec, task, claim, result) VALUES (p_exec, p_task, NULL, p_json)
  ON CONFLICT (exec, task) DO UPDATE SET claim = NULL, result = excluded.result;
  IF v_claims IS NOT NULL
     AND NOT EXISTS (SELECT 1 FROM {s}.steps WHERE exec = p_exec AND claim IS NOT NULL) THEN
    -- the last mark is gone: so is the marks' expiry
    IF p_ttl IS NULL AND v_results IS NULL THEN
      DELETE FROM {s}.step_expiry WHERE exec = p_exec;
    ELSE
      UPDATE {s}.step_expiry SET claims_at = NULL, results_at = coalesce(v_now + p_ttl, results_at),
        sweep_at = least(sweep_at, v_now + p_ttl)
      WHERE exec = p_exec;
    END IF;
  ELSIF p_ttl IS NOT NULL THEN
    INSERT INTO {s}.step_expiry AS e (exec, results_at, sweep_at) VALUES (p_exec, v_now + p_ttl, v_now + p_ttl)
    ON CONFLICT (exec) DO UPDATE SET results_at = excluded.results_at, sweep_at = least(e.sweep_at, excluded.sweep_at);
  END IF;
END $$;

-- SET key value [PX ttl] GET: the previous live value, or NULL.
CREATE OR REPLACE FUNCTION {s}.set_get(p_key text, p_value text, p_ttl bigint)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
  v_now bigint := {s}.now_ms();
  v_old text;
  v_at bigint;
BEGIN
  LOOP
    SELECT e.value, e.expires_at INTO v_old, v_at FROM {s}.entries e WHERE e.key = p_key FOR UPDATE;
    IF FOUND THEN
      UPDATE {s}.entries SET value = p_value, expires_at = v_now + p_ttl WHERE key = p_key;
      IF v_at IS NOT NULL AND v_at <= v_now THEN RETURN NULL; END IF;
      RETURN v_old;
    END IF;
    INSERT INTO {s}.entries (key, value, expires_at) VALUES (p_key, p_value, v_now + p_ttl)
    ON CONFLICT (key) DO NOTHING;
    IF FOUND THEN RETURN NULL; END IF;
  END LOOP;
END $$;

-- Removes at most p_limit expired entries and visits at most 2 * p_limit executions
-- whose `sweep_at` has passed, found through the expiry indexes (never a full scan): it
-- purges what expired, and moves `sweep_at` of a row whose expiries were refreshed
-- since up to the earliest of them. Entries that another transaction holds are left
-- for the next sweep.
-- Skips what other transactions hold (a lock wait would hold the sweep's connection and
-- pile up behind a long transaction), and gives up after 100 ms on a lock it meets inside
-- purge (a step row): the next sweep tries again.
CREATE OR REPLACE FUNCTION {s}.sweep(p_limit integer)
RETURNS integer LANGUAGE plpgsql SET enable_seqscan = off SET lock_timeout = '100ms' AS $$
DECLARE
  v_now bigint := {s}.now_ms();
  v_exec text;
  v_count integer := 0;
BEGIN
  DELETE FROM {s}.entries WHERE key IN (
    SELECT key FROM {s}.entries WHERE expires_at <= v_now
    ORDER BY expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED);
  GET DIAGNOSTICS v_count = ROW_COUNT;
  FOR v_exec IN
    SELECT exec FROM {s}.step_expiry WHERE sweep_at <= v_now ORDER BY sweep_at LIMIT 2 * p_limit
    FOR UPDATE SKIP LOCKED
  LOOP
    PERFORM {s}.purge(v_exec, v_now);
    UPDATE {s}.step_expiry SET sweep_at = least(claims_at, results_at)
    WHERE exec = v_exec AND sweep_at <= v_now;
    v_count := v_count + 1;
  END LOOP;
  RETURN v_count;
END $$;
"#
  )
}

/// `UNAVAILABLE`: the schema holds no durastate store (`what`: "no table", or "no version
/// row in" a `meta` of another program), and nothing was created.
async fn no_store(client: &Client, schema: &str, what: &str) -> StoreError {
  let database = match client
    .query_one("SELECT current_database()::text", &[])
    .await
  {
    Ok(row) => row.get::<_, String>(0),
    Err(err) => return setup_error(err, schema),
  };
  StoreError::new(
    ErrorCode::Unavailable,
    format!(
      "schema \"{schema}\" holds no durastate store ({what} \"{schema}\".meta in database \"{database}\"); nothing was created: check the schema name and the database"
    ),
  )
}

/// Creates the schema, tables and functions, migrates an older version, or checks the
/// recorded version. Several processes starting at once take an advisory lock: one
/// creates (or migrates), the others find it done. Without `create`, a schema that holds
/// no store (no `meta`) is refused `UNAVAILABLE` and nothing is created: the CLI's reads
/// of a mistyped schema or database say so rather than create an empty store there.
pub async fn prepare(client: &Client, schema: &str, create: bool) -> StoreResult<()> {
  check_encoding(client, schema).await?;
  let s = quote_ident(schema);
  let version_sql = format!("SELECT version FROM {s}.meta WHERE id = 1");
  if let Ok(Some(row)) = client.query_opt(&version_sql, &[]).await {
    if let Ok(found) = row.try_get::<_, i32>(0) {
      if found >= VERSION {
        return check_version(found, schema);
      }
    }
  }
  if !create {
    let found: bool = client
      .query_one(
        "SELECT EXISTS (SELECT 1 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = 'meta')",
        &[&schema],
      )
      .await
      .map_err(|e| setup_error(e, schema))?
      .get(0);
    if !found {
      return Err(no_store(client, schema, "no table").await);
    }
  }
  let lock_key = format!("durastate:{schema}");
  client
    .batch_execute("BEGIN")
    .await
    .map_err(|e| setup_error(e, schema))?;
  let result = async {
    client
      .execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&lock_key])
      .await
      .map_err(|e| setup_error(e, schema))?;
    client
      .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {s}"))
      .await
      .map_err(|e| setup_error(e, schema))?;
    // What of ours the schema already holds: `meta` must be ours (an `integer` version),
    // and tables of our names without a version were made by something else.
    let existing: Vec<String> = client
      .query(
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $1 AND c.relname = ANY($2) ORDER BY c.relname",
        &[&schema, &OWN_RELATIONS.iter().chain(["meta"].iter()).copied().collect::<Vec<_>>()],
      )
      .await
      .map_err(|e| setup_error(e, schema))?
      .iter()
      .map(|r| r.get(0))
      .collect();
    let found = match existing.iter().any(|name| name == "meta") {
      true => {
        let row = client
          .query_opt(&version_sql, &[])
          .await
          .map_err(|err| match err.code().map(|c| c.code()) {
            Some(c) if c.starts_with("42") && c != "42501" => not_ours(schema, "a table `meta` without durastate's `id` and `version` columns"),
            _ => setup_error(err, schema),
          })?;
        match row.map(|r| r.try_get::<_, i32>(0)) {
          None => None,
          Some(Ok(version)) => Some(version),
          Some(Err(_)) => {
            return Err(not_ours(schema, "a table `meta` whose `version` is not an integer"));
          }
        }
      }
      false => {
        client
          .batch_execute(&format!(
            "CREATE TABLE {s}.meta (id integer PRIMARY KEY CHECK (id = 1), version integer NOT NULL)"
          ))
          .await
          .map_err(|e| setup_error(e, schema))?;
        None
      }
    };
    // Without `create`, a `meta` without our version row is another program's table.
    if found.is_none() && !create {
      return Err(no_store(client, schema, "no version row in").await);
    }
    let foreign: Vec<&String> = existing.iter().filter(|name| *name != "meta").collect();
    if found.is_none() && !foreign.is_empty() {
      let names = foreign.iter().map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
      return Err(not_ours(
        schema,
        &format!("{names} but no durastate format version (`meta`)"),
      ));
    }
    Ok::<_, StoreError>(found)
  }
  .await;
  let found = match result {
    Ok(found) => found,
    Err(err) => {
      let _ = client.batch_execute("ROLLBACK").await;
      return Err(err);
    }
  };
  let created = async {
    match found {
      None => {
        client.batch_execute(&tables(&s)).await?;
        client.batch_execute(&functions(&s)).await?;
        client
          .execute(
            &format!("INSERT INTO {s}.meta (id, version) VALUES (1, $1)"),
            &[&VERSION],
          )
          .await
          .map(|_| ())
      }
      Some(older @ (1 | 2)) => {
        if older == 1 {
          client.batch_execute(&migrate_v1(&s)).await?;
        }
        // Version 2 to 3: the same tables; the functions change (see `functions`).
        client.batch_execute(&functions(&s)).await?;
        client
          .execute(
            &format!("UPDATE {s}.meta SET version = $1 WHERE id = 1"),
            &[&VERSION],
          )
          .await
          .map(|_| ())
      }
      Some(_) => Ok(()),
    }
  }
  .await;
  if let Err(err) = created {
    let _ = client.batch_execute("ROLLBACK").await;
    return Err(setup_error(err, schema));
  }
  client
    .batch_execute("COMMIT")
    .await
    .map_err(|e| setup_error(e, schema))?;
  match found {
    Some(version) if !(1..VERSION).contains(&version) => check_version(version, schema),
    _ => Ok(()),
  }
}

fn check_version(found: i32, schema: &str) -> StoreResult<()> {
  match found {
    VERSION => Ok(()),
    newer if newer > VERSION => Err(StoreError::new(
      ErrorCode::CorruptData,
      format!(
        "schema \"{schema}\" holds format version {newer}, newer than this durastate understands ({VERSION})"
      ),
    )),
    older => Err(StoreError::new(
      ErrorCode::CorruptData,
      format!("schema \"{schema}\" holds format version {older}, which this durastate cannot migrate"),
    )),
  }
}

/// A schema holding tables durastate did not make: left as it is.
fn not_ours(schema: &str, what: &str) -> StoreError {
  StoreError::new(
    ErrorCode::CorruptData,
    format!(
      "schema \"{schema}\" holds {what}: it was not made by durastate, and is left untouched (choose another schema with option `schema`)"
    ),
  )
}

fn setup_error(err: tokio_postgres::Error, schema: &str) -> StoreError {
  let mapped = super::errors::store_error(&err);
  let hint = match err.code().map(|c| c.code()) {
    Some("42501") => " (the role needs CREATE on the database the first time, to create the schema and its tables, and USAGE on the schema and read/write on its tables after)",
    Some(c) if c.starts_with("42") && mapped.code == ErrorCode::CorruptData => {
      " (the schema holds objects of durastate's names that it did not make: choose another schema with option `schema`)"
    }
    _ => "",
  };
  StoreError::new(
    mapped.code,
    format!(
      "cannot create or check the tables in schema \"{schema}\": {}{hint}",
      mapped.message
    ),
  )
}

/// Refuses a database whose encoding is not UTF8: ids, keys and values are UTF-8 text,
/// and one outside the database's character set (an emoji in LATIN1) would fail its
/// call with an error naming neither key nor task.
async fn check_encoding(client: &Client, schema: &str) -> StoreResult<()> {
  let row = client
    .query_one(
      "SELECT current_setting('server_encoding'), current_database()::text",
      &[],
    )
    .await
    .map_err(|e| setup_error(e, schema))?;
  let (encoding, database): (String, String) = (row.get(0), row.get(1));
  match encoding.as_str() {
    // SQL_ASCII stores the bytes it is given as they are: the UTF-8 text comes back whole.
    "UTF8" | "SQL_ASCII" => Ok(()),
    other => Err(StoreError::invalid_input(format!(
      "the database \"{database}\" has encoding {other}: durastate stores ids, keys and values as UTF-8 text and needs a UTF8 database (CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0, or another database)"
    ))),
  }
}
