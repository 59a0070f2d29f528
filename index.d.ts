/**
 * durastate: durable execution state for Node.js workers, in Rust.
 *
 * A drop-in replacement for the `@idioteque/redis` WorkerStore (same keys, same JSON),
 * with exact millisecond TTLs, an atomic commit and one round trip per call, on Redis,
 * Postgres, an embedded SQLite file, or memory.
 */

/** The stable codes carried by {@link DurastateError.code}. */
export type ErrorCode =
  /** An argument or option is invalid; nothing was sent or stored. */
  | 'INVALID_INPUT'
  /** A value has no JSON form (BigInt, circular, function); nothing was written. */
  | 'SERIALIZE'
  /** Stored data is not valid (bad JSON, damaged or foreign SQLite file). */
  | 'CORRUPT_DATA'
  /** A key holds another type of data (Redis `WRONGTYPE`). */
  | 'WRONG_TYPE'
  /** The server or file could not be reached or used. */
  | 'UNAVAILABLE'
  /** The call did not finish within `commandTimeout`. */
  | 'TIMEOUT'
  /** The server refused the credentials (`WRONGPASS`, `NOAUTH`, a password given to a server that has none) or the ACL user may not run a command (`NOPERM`). */
  | 'AUTH'
  /** The TLS handshake failed: untrusted, expired or misnamed certificate, a missing client certificate, or a server that does not speak TLS. */
  | 'TLS'
  /** The store was closed. */
  | 'DISPOSED'
  /** KV: the mount name is not configured (the message lists the mounts). */
  | 'UNKNOWN_MOUNT'
  /** KV: a write (`set`, `merge`, `delete`, `clear`, ...) on a mount with `mode: 'read'`. */
  | 'READ_ONLY'
  /** KV: a read (`get`, `keys`, ...) on a mount with `mode: 'write'`. */
  | 'WRITE_ONLY'
  /** KV: the value's type is not the one the mount's schema declares for the key. */
  | 'TYPE_MISMATCH'
  /** KV: the value's JSON is larger than the mount's `maxValueSize` (UTF-8 bytes). */
  | 'VALUE_TOO_LARGE'
  /** KV: a new key would take the mount past its `maxEntries`. */
  | 'ENTRY_LIMIT'
  /** A bug in durastate (a caught Rust panic); please report it. */
  | 'INTERNAL'

/** Every error durastate throws or rejects with. */
export declare class DurastateError extends Error {
  /** An error with `code` (as durastate's own are made; for wrappers and tests). */
  constructor(code: ErrorCode, message?: string, options?: { cause?: unknown })
  readonly name: 'DurastateError'
  /** What went wrong, as a stable code to branch on. */
  readonly code: ErrorCode
  /**
   * `CORRUPT_DATA` of stored JSON that does not parse: the stored text, which the message
   * leaves out (it gives the text's length). Non-enumerable, so logging or serializing the
   * error does not show it.
   */
  readonly stored?: string
}

/** The string the worker library stores for a step that returned `undefined`. */
export declare const EMPTY_EXECUTION_RESULT: '<empty_execution_result>'

/**
 * Options every store takes. Every factory accepts every backend's options (one options
 * object can serve whichever backend `DURASTATE_URL` names; another backend's options are
 * not used); a key no backend knows, an unsupported `tls` key, a field a target does not
 * have, or a value out of an option's range or set (whichever backend the option is for)
 * throws `INVALID_INPUT` naming it.
 */
export interface StoreOptions {
  /** Time to live of every key written, in ms (exact; fractions round up). 0 or absent: never expire. */
  ttl?: number
  /** Prepended to every key. Well-formed Unicode: a lone surrogate throws `INVALID_INPUT`. */
  prefix?: string
  /**
   * Bound on every round trip of a call, in ms, including connecting or queueing: end to
   * end for a call of one round trip (most are); a listing gets it per page. Default 5000.
   * A KV call waiting for the calls before it on its keys counts the wait: past
   * commandTimeout from when it was made it rejects with `TIMEOUT` and is never sent.
   * On Redis, when a call times out while the oldest call still unanswered has waited 3 ×
   * commandTimeout with not a byte from the server since it was made, the connection is
   * abandoned and the next call connects again (a hung server, a half-open path).
   */
  commandTimeout?: number
  /**
   * WorkerStore key layout. `'compatible'` (default): `<prefix><id>`,
   * `<prefix><id>-transactions`, `<prefix><id>-results`, the keys of the `@idioteque/redis`
   * JS store. `'hashtag'`: `<prefix>{<id>}`, `<prefix>{<id>}-transactions`,
   * `<prefix>{<id>}-results`, so an execution's keys share one Redis Cluster slot and its
   * atomic commit can run there. Required on a cluster (creation throws `INVALID_INPUT`
   * otherwise); works on every backend, but the JS store does not read hash-tag keys.
   * Not used by the KV store.
   */
  keyLayout?: 'compatible' | 'hashtag'
}

/** Options of a Redis store. */
export interface RedisStoreOptions extends StoreOptions {
  /**
   * Bound on establishing the connection (TCP, AUTH, SELECT, PING), in ms. Default 5000. A call
   * that never had a connection rejects `UNAVAILABLE` then, not retried (on a cluster: a call
   * made before any given node answered with the slot map).
   */
  connectTimeout?: number
  /**
   * How calls ride out a dropped connection. `null` is as if absent; anything but an object
   * (`retry: 0`, `retry: false`) is `INVALID_INPUT`: `{ attempts: 0 }` turns resending off.
   */
  retry?: RetryOptions | null
  /**
   * `'none'` (default): a write is acknowledged once the server has it in memory.
   * `'aof'`: once it is on the server's disk. The store checks at connect that the server
   * (on a cluster: every master, and every node connected later) runs with `appendonly yes`
   * and `appendfsync always`, and otherwise rejects every call with `UNAVAILABLE`, naming the
   * settings. Where `CONFIG` is renamed or blocked, `INFO persistence` is read, and since it
   * does not show the fsync policy, `aof` is refused with a message naming the blocked
   * command. Replication is not a durability guarantee: a failover can lose writes a replica
   * had not received.
   */
  durability?: 'none' | 'aof'
  /**
   * TLS settings; implied by a `rediss://`, `rediss+sentinel://` or `rediss+cluster://` URL
   * (then all optional). Given, they turn TLS on (`true`: with the defaults); `false` and
   * `null` are the same as leaving them out. They apply to the server, every cluster node,
   * and the sentinels (unless `sentinelTls` says otherwise).
   */
  tls?: TlsOptions | boolean | null
  /**
   * With sentinels: how the sentinels are reached when not as the server is. `false`:
   * plain text; `true`: TLS with `tls`; or TLS settings of their own. Default: as the server.
   */
  sentinelTls?: boolean | TlsOptions
}

/**
 * TLS for Redis and Postgres (rustls; TLS 1.2 and 1.3). Each PEM value is the PEM text
 * itself (a string, or a Buffer as `fs.readFileSync` gives it; `ca` also an array of PEM
 * texts) or the path of a PEM file, read when a Redis or Postgres store is created (a bad
 * one throws `INVALID_INPUT`). Every factory, SQLite and memory included, checks what does
 * not depend on the machine, with the same `INVALID_INPUT`: PEM text given inline (that it
 * parses; `cert` with `key`, that they match), `cert` and `key` given together, and
 * `servername`. A file path is read only by the backends that use TLS, so a path that
 * exists only where the server is reached does not fail a SQLite store elsewhere.
 */
export interface TlsOptions {
  /**
   * CA certificate(s) the server's certificate must chain to, or be (a self-signed
   * certificate, `CA:TRUE` included, as Node.js's `tls` accepts it; its dates and name are
   * still checked). Default: the system's trusted roots.
   */
  ca?: string | Uint8Array | Array<string | Uint8Array>
  /** Client certificate (chain), for servers started with `tls-auth-clients yes`. Needs `key`. */
  cert?: string | Uint8Array
  /** The client certificate's private key (PKCS#8, PKCS#1 or SEC1 PEM; not encrypted). */
  key?: string | Uint8Array
  /**
   * The name every server's certificate must be valid for. Default: the host connected to
   * (on a cluster, the address the cluster names for each node; with sentinels, the address
   * they name).
   */
  servername?: string
  /** `false` accepts any server certificate: for tests only (no protection from a man in the middle). Default `true`. */
  rejectUnauthorized?: boolean
}

/** How a Redis store rides out a dropped connection (server restart, `CLIENT KILL`). */
export interface RetryOptions {
  /**
   * How many times a call that is safe to repeat (every call but `tryBeginExecutionTask`
   * with the default key layout, and KV `delete`/`deleteMany`, which reject `UNAVAILABLE`
   * instead; see the README's table) is sent again after its connection dropped,
   * reconnecting with backoff in between and
   * never past `commandTimeout`. Default 3; 0 turns resending off. A whole number from 0 to
   * 100 (else `INVALID_INPUT`).
   */
  attempts?: number
  /** First reconnect delay in ms; doubles per failed attempt, with jitter. Default 50. */
  minDelay?: number
  /** Longest reconnect delay in ms. Default 2000. */
  maxDelay?: number
}

/** Options of an embedded (SQLite) store. */
export interface SqliteStoreOptions extends StoreOptions {
  /** How long to wait for another process's lock on the file, in ms. Default 5000. */
  busyTimeout?: number
  /**
   * `'normal'` (default): every acknowledged call survives a crash of the process.
   * `'full'`: also survives power loss (one fsync per write).
   */
  synchronous?: 'normal' | 'full'
  /**
   * Page size of a new database file, in bytes: a power of two from 512 to 65536 (else `INVALID_INPUT`); default
   * 1024. An existing file keeps its own. Smaller pages make each commit write less to the
   * WAL: 1024 measured the 1 KiB-result lifecycle 1.6–1.9x faster, but 16 KiB values about
   * 2x slower (they spill into overflow pages). Choose from your result sizes.
   */
  pageSize?: number
}

/** Options of a Postgres store. */
export interface PostgresStoreOptions extends StoreOptions {
  /** Bound on establishing a connection (TCP, TLS, authentication), in ms; with several hosts, on each host in turn. Default 5000. */
  connectTimeout?: number
  /**
   * How calls ride out a dropped connection (a server restart, `pg_terminate_backend`, a
   * failover). `null` is as if absent; anything but an object (`retry: 0`) is
   * `INVALID_INPUT`: `{ attempts: 0 }` turns resending off.
   */
  retry?: RetryOptions | null
  /** The schema holding the store's tables, created on first use (1 to 63 bytes, no NUL or `$`, not starting with `pg_`: `INVALID_INPUT`). Default `'durastate'`. */
  schema?: string
  /**
   * Connections the store opens at most. Default 4: three group-commit lanes (calls in
   * flight together on one lane share one connection and one transaction; a call's lane is
   * its key's) and one for the sweep of expired rows. A whole number from 1 to 1000 (else
   * `INVALID_INPUT`).
   */
  poolSize?: number
  /**
   * TLS settings (same shape as Redis; `servername` is not supported: the certificate is
   * checked against the URL's host). Without `sslmode` in the URL, giving `tls` means
   * `sslmode=verify-full`; `false` and `null` are the same as leaving it out. With
   * `sslmode=disable` (plain text), `allow` or `prefer` (plain text when the server offers no
   * TLS), `tls` (`true` included) throws `INVALID_INPUT` at creation: drop one, or give
   * `require`, `verify-ca` or `verify-full`.
   */
  tls?: TlsOptions | boolean | null
}

/** A Postgres server given as fields rather than a URL. */
export interface PostgresConnectionOptions {
  /** Host name, IP address, or the directory of the server's unix socket. Default `localhost`. */
  host?: string
  /** A whole number from 1 to 65535. Default 5432. */
  port?: number
  /** Default `postgres`. */
  user?: string
  password?: string
  /** Default: the user's name. */
  database?: string
  /** libpq's `sslmode`: `disable`, `allow`, `prefer` (default), `require`, `verify-ca` or `verify-full`. */
  sslmode?: 'disable' | 'allow' | 'prefer' | 'require' | 'verify-ca' | 'verify-full'
  /** Shown in `pg_stat_activity`. Default `durastate`. */
  applicationName?: string
}

/**
 * The options every factory takes: those of every backend (one options object serves
 * whichever backend a URL names; another backend's options are checked, then not used).
 */
export type AnyStoreOptions = RedisStoreOptions & SqliteStoreOptions & PostgresStoreOptions

/** A Redis server given as fields rather than a URL. */
export interface RedisConnectionOptions {
  /** Host name or IP address. Default `127.0.0.1`. */
  host?: string
  /** TCP port: a whole number from 1 to 65535. Default 6379. */
  port?: number
  /** ACL user name. */
  username?: string
  /** Password (with or without `username`). */
  password?: string
  /**
   * Database number: a whole number from 0 to 2147483647 (else `INVALID_INPUT` at creation).
   * Default 0. One beyond the server's `databases` setting rejects calls with `INVALID_INPUT`.
   */
  db?: number
  /** Connect with TLS (as `rediss://`; with `sentinels`, to them and the server; with `cluster`, to every node); settings in the store option `tls`. */
  tls?: boolean
  /**
   * Sentinels to ask for the master's address at every connect (instead of `host`/`port`).
   * The store follows a failover: while connected it asks the sentinels five times a second
   * whether they name another master or are promoting a replica in its place, and leaves the
   * old master then, as after a dropped connection or a `READONLY` reply: it asks again and
   * reconnects; calls wait for the new master (within `commandTimeout`, `retry`). Calls in
   * flight on the old master are sent again, except those never sent twice (the
   * default-layout claim, KV `delete`/`deleteMany`), which reject `UNAVAILABLE`. What the
   * old master acknowledged before the store saw the failover (at most about 200 ms) can
   * still be lost: set `min-replicas-to-write` on the servers to close that window.
   */
  sentinels?: Array<{ host: string; port?: number }>
  /** The master's name as the sentinels monitor it (with `sentinels`). */
  name?: string
  /** ACL user on the sentinels, if they need one. */
  sentinelUsername?: string
  /** Password of the sentinels, if they need one (`username`/`password` are the master's). */
  sentinelPassword?: string
  /**
   * Redis Cluster: URLs (`redis://host:port`, or all `rediss://host:port` for TLS) of some of its nodes, instead of
   * `host`/`port`; the others are found from them. `username`/`password` apply to every
   * node. Commands are routed by slot and follow `MOVED`/`ASK` (resharding) and
   * reconnects; every call stays bounded by `commandTimeout`. A call that times out on a node
   * has the slot map read again, so calls leave a hung master once a replica replaced it. A WorkerStore there needs
   * `keyLayout: 'hashtag'`. KV listing and `clear` scan every master; `getMany`/`deleteMany`
   * are split by slot; `setMany` is atomic per slot only. A multi-key call on a slot being
   * migrated waits for the migration under `retry` and `commandTimeout`, then rejects
   * `UNAVAILABLE` ("slot N ... is being migrated"). With a master down, KV writes of new keys
   * go on from the store's last entry count (see `maxEntries`). TLS (`rediss://` nodes, the option
   * `tls`) applies to every node, those redirects and failovers name included. A node URL is
   * `redis://[user:password@]host:port` only: a query parameter, a database other than 0,
   * port 0, `name`/`sentinelUsername`/`sentinelPassword`, or node URLs with different
   * credentials are `INVALID_INPUT`.
   * @example createRedisStore({ cluster: ['redis://10.0.0.1:7000', 'redis://10.0.0.2:7000'] }, { keyLayout: 'hashtag' })
   */
  cluster?: string[]
}

/** The WorkerStore interface of the worker library (idioteque), which every store satisfies. */
export interface WorkerStore {
  beginExecution(executionId: string): Promise<void>
  getExecutionTaskResults?(executionId: string): Promise<{ [taskId: string]: unknown }>
  getExecutionTaskResult(executionId: string, taskId: string): Promise<unknown | undefined>
  beginExecutionTask(executionId: string, taskId: string): Promise<void>
  commitExecutionTaskResult(executionId: string, taskId: string, value: unknown): Promise<void>
  isExecutionInProgress(executionId: string): Promise<boolean>
  isExecutionTaskInProgress(executionId: string, taskId: string): Promise<boolean>
  disposeExecution(executionId: string): Promise<void>
}

/**
 * A durable WorkerStore. Every method is one network round trip (Redis) or one
 * transaction (SQLite), bounded by `commandTimeout`, and rejects with a
 * {@link DurastateError}. The methods are called on the store: one taken off it
 * (`const { beginExecution } = store`) rejects `INVALID_INPUT`; bind it first.
 */
export declare class DurableWorkerStore implements WorkerStore {
  private constructor()
  /** Marks the execution in progress (`SET <id> "true" [PX ttl]`). */
  beginExecution(executionId: string): Promise<void>
  /** Every committed result of the execution, by step id; `{}` when none. */
  getExecutionTaskResults(executionId: string): Promise<{ [taskId: string]: unknown }>
  /**
   * One step's committed result, or `undefined` when it has none. A step that returned
   * `undefined` reads back as {@link EMPTY_EXECUTION_RESULT}, as the worker library expects.
   */
  getExecutionTaskResult(executionId: string, taskId: string): Promise<unknown | undefined>
  /** Marks a step in progress (`HSET <id>-transactions <taskId> "true"`, plus `PEXPIRE`). */
  beginExecutionTask(executionId: string, taskId: string): Promise<void>
  /**
   * Claims a step atomically (`HSETNX`): of any number of concurrent callers, exactly one
   * gets `true`. The claim is on the in-progress marker; check for a result first.
   * A claim that loses writes nothing: it does not refresh the marks' `ttl`.
   * Unlike the other calls it is never sent again after a dropped connection (the first
   * `HSETNX` may have landed): it rejects with `UNAVAILABLE` instead. With
   * `keyLayout: 'hashtag'` (required on a cluster) the claim is a token unique to it, so
   * it is sent again and a lost reply is still answered exactly.
   *
   * With Redis replicas and failover (Sentinel, Cluster), "exactly one" holds while no failover
   * deposes the master: a master paused or cut off for longer than `cluster-node-timeout`
   * (`down-after-milliseconds`) and replaced can, when it comes back and before it learns it
   * was replaced, answer `true` to a claim that reached it (in flight, or sent before the
   * store learned of the failover) while another caller got `true` from the new master; that
   * claim is then lost, like any write the old master acknowledged. A `commandTimeout` well
   * below `cluster-node-timeout` and `min-replicas-to-write` narrow this window; see the
   * README, "Claims across a failover".
   */
  tryBeginExecutionTask(executionId: string, taskId: string): Promise<boolean>
  /**
   * Stores a step's result as JSON and clears its in-progress marker, atomically.
   * `undefined` is stored as {@link EMPTY_EXECUTION_RESULT}. A value with no JSON form
   * rejects with `SERIALIZE`, and JSON over 2^29 − 24 UTF-16 code units (more than a JS string can
   * hold when read back) with `INVALID_INPUT`; neither writes anything.
   */
  commitExecutionTaskResult(executionId: string, taskId: string, value: unknown): Promise<void>
  /** Whether the execution was begun and is not yet disposed or expired. */
  isExecutionInProgress(executionId: string): Promise<boolean>
  /** Whether the step is marked in progress. */
  isExecutionTaskInProgress(executionId: string, taskId: string): Promise<boolean>
  /** Deletes the execution's state (one `DEL` of its three keys). Unknown ids are a no-op. */
  disposeExecution(executionId: string): Promise<void>
  /**
   * Releases the connection or database. The calls made before it finish, and it resolves
   * after they settled (nothing is left to land when it does: on Postgres, a statement of a
   * call that rejected `TIMEOUT` was ended or a cancel request sent first, each within
   * `connectTimeout`); later calls
   * reject with `DISPOSED`. Idempotent. On SQLite it resolves once the store's connections
   * to the file are closed; when they were the last ones (no other store or process has
   * it open), its WAL is copied into the file, so the file can be copied or deleted right
   * after. When that copy fails because the file cannot be written (made read-only or
   * immutable while the store ran), it rejects `UNAVAILABLE` naming the WAL left next to
   * the file, which holds writes the file lacks; the store is closed all the same.
   */
  close(): Promise<void>
  /** Whether {@link close} was called. */
  readonly closed: boolean
}

/**
 * A store on Redis, synchronous and lazy: it validates its arguments (throwing
 * `INVALID_INPUT`) and connects on first use.
 *
 * @param target `redis://[user:pass@]host[:port][/db]`, `rediss://...` (TLS),
 *   `redis+unix:///path/to/redis.sock[?db=N]` (a unix socket; also `user`, `pass`, `protocol`),
 *   `redis+sentinel://[user:pass@]host1:port1,host2:port2/masterName[/db]` (`rediss+sentinel://`:
 *   over TLS),
 *   `redis+cluster://[user:pass@]host1:port1,host2:port2` (with `keyLayout: 'hashtag'`;
 *   `rediss+cluster://`: over TLS), or fields
 *   (`{ cluster: [url, ...] }` for a Redis Cluster, with `keyLayout: 'hashtag'`);
 *   default `REDIS_URL`, then `redis://127.0.0.1:6379`. Anything else, an array of node URLs
 *   included, is `INVALID_INPUT` (a cluster's nodes go in `{ cluster: [...] }`).
 * @example
 * const worker = createWorker({ store: createRedisStore(process.env.REDIS_URL, { ttl: 86_400_000 }) })
 */
export declare function createRedisStore(target?: string | RedisConnectionOptions | null, options?: AnyStoreOptions | null): DurableWorkerStore

/**
 * A store on Postgres, synchronous and lazy: it validates its arguments (throwing
 * `INVALID_INPUT`) and connects on first use, creating its tables then (schema
 * `durastate`, or option `schema`). Values are stored as JSON text. Postgres text cannot
 * hold NUL: an execution id or task id holding `\u0000` rejects `INVALID_INPUT`. Postgres
 * indexes ids: an execution id and a task id may take at most 2,000 bytes (UTF-8)
 * together, counting the store's `prefix` (a B-tree entry holds about 2.7 KB); longer ones
 * reject `INVALID_INPUT`, saying which and how long (Redis, SQLite and memory take longer
 * ones). KV keys on Postgres have the same limit.
 *
 * @param target A libpq URL, `postgres://user:password@host:port/database?sslmode=require`
 *   (`postgresql://` too; `sslmode` and `application_name` as libpq reads them), a libpq
 *   key/value string (`host=db port=5433 sslmode=require password='a b'`), or fields;
 *   default `DATABASE_URL`, then `postgres://postgres@localhost:5432/postgres`. Anything
 *   else (an array, a number) is `INVALID_INPUT`.
 * @example
 * const worker = createWorker({ store: createPostgresStore(process.env.DATABASE_URL, { ttl: 86_400_000 }) })
 */
export declare function createPostgresStore(target?: string | PostgresConnectionOptions | null, options?: AnyStoreOptions | null): DurableWorkerStore

/**
 * A store in a SQLite file: durable, shared safely by processes on one machine.
 * Directories are created on first use.
 *
 * @param path Default `./.durastate/state.db`. A file path: `:memory:` and SQLite `file:` URIs are `INVALID_INPUT`.
 */
export declare function createSqliteStore(path?: string | null, options?: AnyStoreOptions | null): DurableWorkerStore

/** A store in this process's memory, with the same semantics (TTL included); nothing persists. */
export declare function createMemoryStore(options?: AnyStoreOptions | null): DurableWorkerStore

/**
 * A store picked by URL: `redis://`, `rediss://` (TLS), `redis+unix://` (a unix socket),
 * `redis+sentinel://`, `rediss+sentinel://`, `redis+cluster://`, `rediss+cluster://` (a
 * cluster needs `keyLayout: 'hashtag'`) (Redis), `postgres://` or
 * `postgresql://` (Postgres), `sqlite:<path>` or `file:<path>` (SQLite), `memory:`.
 * `sqlite:` takes the path as written; a `file:` URL is decoded as a URL (`%20` is a space,
 * host empty or `localhost`). A query (`?...`) on a `sqlite:` or `file:` URL is
 * `INVALID_INPUT`, and so is anything after `memory:` (`memory:name`, `memory:?x`: each
 * store in memory is its own).
 * Without a URL: `DURASTATE_URL`, then `REDIS_URL`, then `DATABASE_URL`, else the SQLite
 * file `./.durastate/state.db`.
 */
export declare function createStore(url?: string | null, options?: AnyStoreOptions | null): DurableWorkerStore

// ---------------------------------------------------------------------------------------
// The KV store
// ---------------------------------------------------------------------------------------

/** The value types a mount's schema can declare. */
export type KvType = 'string' | 'number' | 'bool' | 'list' | 'dict'

/** One declared key of a mount's schema (another key, a typo such as `descripton`, is `INVALID_INPUT` naming it). */
export interface KvSchemaEntry {
  /** The JSON type every value of the key must have (`list`: array, `dict`: plain object). */
  type: KvType
  /** What `get` returns while the key is not stored, and what `clear` writes back. */
  default: unknown
  /** Free text, returned by `schema()`; anything but a string (or `null`, as if absent) is `INVALID_INPUT`. */
  description?: string | null
}

/** How a mount behaves. */
export interface KvMountOptions {
  /**
   * `'read-write'` (default), `'read'` (writes reject with `READ_ONLY`) or `'write'`
   * (reads reject with `WRITE_ONLY`; `has` counts as a read).
   */
  mode?: 'read' | 'write' | 'read-write'
  /**
   * Prepended to every key of the mount (no separator is added). Two mounts of one store
   * may not have prefixes where one starts with the other, and a prefix may not be empty (`clear()` would
   * cover the whole database). Default: the mount name + `:`.
   */
  prefix?: string
  /**
   * Declared keys. With a schema (even `{}`) the mount is *declared*: only these keys may
   * be read or written, with their types. Without one it is *open*: any key, any JSON value.
   */
  schema?: Record<string, KvSchemaEntry>
  /**
   * Most entries the mount may hold; a `set` of a new key past it rejects with `ENTRY_LIMIT`. Default 10000.
   * On a Redis Cluster with a master down, counted from the store's last count plus its own
   * writes since (a store that never counted the mount rejects new keys until it answers).
   */
  maxEntries?: number
  /** Largest value, as UTF-8 bytes of its JSON; bigger rejects with `VALUE_TOO_LARGE`. Default 102400; at most 2^29 − 24 (the longest string V8 makes). */
  maxValueSize?: number
  /** Time to live of every entry written, in ms. Absent or 0: entries never expire. */
  ttl?: number
}

/** Options of a KV store: the mounts, plus the options of the backend the URL names. */
export interface KvStoreOptions extends RedisStoreOptions, SqliteStoreOptions, Omit<PostgresStoreOptions, 'tls' | 'retry' | 'connectTimeout'> {
  /**
   * Named mounts. Without `mounts` the store has one open mount, `"default"`, whose
   * prefix is `options.prefix` (default `"kv:"`) and whose `ttl` is `options.ttl`.
   * `options.prefix` and `options.ttl` are otherwise unused (give each mount its own).
   * `mounts: {}` (no mount at all) is `INVALID_INPUT`: leave `mounts` out for the one mount
   * `"default"`.
   */
  mounts?: Record<string, KvMountOptions>
}

/** Per-call options of a write (another key, a typo such as `tll`, rejects `INVALID_INPUT` naming it; nothing is written). */
export interface KvWriteOptions {
  /** Time to live of this write, in ms; overrides the mount's `ttl`. Absent or 0: the mount's `ttl`. */
  ttl?: number
}

/** What `schema(mount)` lists for each declared key, in declaration order. */
export interface KvSchemaInfo {
  key: string
  type: KvType
  description: string
}

/** What `mounts()` lists for each mount, in configuration order. */
export interface KvMountInfo {
  name: string
  mode: 'read' | 'write' | 'read-write'
  schema: 'declared' | 'open'
  prefix: string
  maxEntries: number
  maxValueSize: number
  /** The mount's TTL in ms; 0 when entries never expire. */
  ttl: number
}

/**
 * The KV calls of one mount: {@link KvStore} without the mount argument. A view, its calls
 * bound to it: `const { get, set } = kv.mount('cache')` works.
 */
export interface KvMount {
  readonly name: string
  get(key: string): Promise<unknown>
  getOr<T>(key: string, fallback: T): Promise<unknown | T>
  getJson(key: string): Promise<string | undefined>
  set(key: string, value: unknown, options?: KvWriteOptions): Promise<true>
  setJson(key: string, json: string, options?: KvWriteOptions): Promise<true>
  merge(key: string, partial: Record<string, unknown>, options?: KvWriteOptions): Promise<true>
  delete(key: string): Promise<boolean>
  has(key: string): Promise<boolean>
  keys(pattern?: string): Promise<string[]>
  clear(): Promise<true>
  getAll(): Promise<Record<string, unknown>>
  getMany(keys: string[]): Promise<Record<string, unknown>>
  setMany(entries: Record<string, unknown>, options?: KvWriteOptions): Promise<true>
  deleteMany(keys: string[]): Promise<number>
  getByPrefix(prefix: string): Promise<Record<string, unknown>>
  schema(): KvSchemaInfo[]
}

/**
 * A key-value store with mounts, access modes, schemas and size limits, on Redis,
 * Postgres, SQLite or memory. Values are stored as their JSON text, one entry per key at
 * `prefix + key` (a Redis string, a row on SQL), so other clients can read them. Every call rejects with a
 * {@link DurastateError} whose message names the mount (and the key, for a single-key call). The methods are
 * called on the store: one taken off it (`const { get } = kv`) rejects `INVALID_INPUT`;
 * bind it first, or use {@link KvStore.mount}, whose calls are bound.
 */
export declare class KvStore {
  private constructor()
  /**
   * The stored value; when the key is not stored: the schema's default on a declared mount,
   * `""` on an open mount (as the source stores do; use {@link getOr} or {@link has} to tell).
   * On a declared mount, a key outside the schema rejects with `INVALID_INPUT`.
   */
  get(mount: string, key: string): Promise<unknown>
  /** The stored value, or `fallback` when the key is not stored. No schema check. */
  getOr<T>(mount: string, key: string, fallback: T): Promise<unknown | T>
  /**
   * The stored JSON text as it is, not parsed (so a number keeps digits a JS number would
   * lose), or `undefined` when the key is not stored. No schema check.
   */
  getJson(mount: string, key: string): Promise<string | undefined>
  /**
   * Stores `value` (any JSON value). Checks, in order: mode (`READ_ONLY`), declared key
   * (`INVALID_INPUT`), type (`TYPE_MISMATCH`), size (`VALUE_TOO_LARGE`), entry limit for a
   * new key (`ENTRY_LIMIT`). The TTL is set with the write, atomically; without a TTL, a
   * previous TTL of the key is dropped.
   */
  set(mount: string, key: string, value: unknown, options?: KvWriteOptions): Promise<true>
  /**
   * {@link set} of a value given as JSON text, stored as it is (`'{"id":12345678901234567890}'`
   * keeps its digits). Text that is not one JSON value rejects with `INVALID_INPUT`.
   */
  setJson(mount: string, key: string, json: string, options?: KvWriteOptions): Promise<true>
  /**
   * Shallow-merges `partial` into the stored object (`{...current, ...partial}`), atomically
   * on the store (a script on Redis, a transaction on SQLite), so concurrent merges never
   * lose a field. A missing key is created as `partial`; a stored value that is not an
   * object rejects with `INVALID_INPUT`. Same checks as `set` (size on the merged value).
   * Without a TTL (call or mount) the key keeps the TTL it had. `partial` goes through
   * `JSON.stringify`, which leaves out members set to `undefined` (or a function or
   * symbol): they leave the stored members as they are; a merge never removes a member.
   */
  merge(mount: string, key: string, partial: Record<string, unknown>, options?: KvWriteOptions): Promise<true>
  /** Deletes the key; `true` when it was stored. */
  delete(mount: string, key: string): Promise<boolean>
  /** Whether the key is stored (not expired). No schema check. */
  has(mount: string, key: string): Promise<boolean>
  /**
   * The mount's stored keys (prefix stripped), each once, sorted by their UTF-8 bytes (code point order). `pattern` is a Redis glob
   * (`*`, `?`, `[abc]`, `[^a]`, `\\` escapes) over the key; the mount prefix always matches literally.
   */
  keys(mount: string, pattern?: string): Promise<string[]>
  /**
   * Deletes every entry of the mount (and only of the mount), then writes back the schema's
   * defaults on a declared mount. Not atomic: a concurrent write may survive.
   */
  clear(mount: string): Promise<true>
  /** Every stored entry of the mount, by key. */
  getAll(mount: string): Promise<Record<string, unknown>>
  /** The stored entries among `keys` (missing keys are left out), in one `MGET`. No schema check. */
  getMany(mount: string, keys: string[]): Promise<Record<string, unknown>>
  /** Stores every entry, all or nothing (one `MULTI`/`EXEC`, one SQLite transaction), with the checks of `set`. */
  setMany(mount: string, entries: Record<string, unknown>, options?: KvWriteOptions): Promise<true>
  /** Deletes the keys (one `UNLINK`); resolves with how many were stored. */
  deleteMany(mount: string, keys: string[]): Promise<number>
  /** The stored entries whose key starts with `prefix` (matched literally, glob characters included). */
  getByPrefix(mount: string, prefix: string): Promise<Record<string, unknown>>
  /** The mount's declared keys (`[]` for an open mount). */
  schema(mount: string): KvSchemaInfo[]
  /** Every mount, with its settings (defaults filled in). */
  mounts(): KvMountInfo[]
  /** The calls of one mount, without the mount argument. Throws `UNKNOWN_MOUNT` at once. */
  mount(name: string): KvMount
  /**
   * Releases the connection or database. The calls made before it finish, and it resolves
   * after they settled (nothing is left to land when it does: on Postgres, a statement of a
   * call that rejected `TIMEOUT` was ended or a cancel request sent first, each within
   * `connectTimeout`); later calls
   * reject with `DISPOSED`. Idempotent. On SQLite it resolves once the store's connections
   * to the file are closed; when they were the last ones (no other store or process has
   * it open), its WAL is copied into the file, so the file can be copied or deleted right
   * after. When that copy fails because the file cannot be written (made read-only or
   * immutable while the store ran), it rejects `UNAVAILABLE` naming the WAL left next to
   * the file, which holds writes the file lacks; the store is closed all the same.
   */
  close(): Promise<void>
  /** Whether {@link close} was called. */
  readonly closed: boolean
}

/**
 * A KV store picked by URL, as {@link createStore}: `redis://`, `postgres://`,
 * `sqlite:<path>`, `file:<path>`, `memory:`, or `{ host, port, ... }` for Redis. Without a
 * URL: `DURASTATE_URL`, then `REDIS_URL`, then `DATABASE_URL`, else the SQLite file
 * `./.durastate/state.db`.
 * Synchronous and lazy; bad options throw `INVALID_INPUT` at once (overlapping prefixes,
 * unknown types, defaults that do not match their type, ...).
 *
 * @example
 * const kv = createKvStore('redis://127.0.0.1:6379', {
 *   mounts: {
 *     user: { prefix: 'app:user:', schema: { name: { type: 'string', default: '' } } },
 *     cache: { prefix: 'app:cache:', ttl: 60_000 },
 *   },
 * })
 * await kv.set('user', 'name', 'Alice')
 * const cache = kv.mount('cache')
 * await cache.set('report', { rows: 3 })
 */
export declare function createKvStore(url?: string | RedisConnectionOptions | null, options?: KvStoreOptions | null): KvStore

// ---------------------------------------------------------------------------------------
// Observability: diagnostics_channel
// ---------------------------------------------------------------------------------------

/** The name of the tracing channel every store call is published on. */
export declare const CALL_CHANNEL: 'durastate:call'
/** The name of the channel connection events are published on. */
export declare const CONNECTION_CHANNEL: 'durastate:connection'

/** The backend a store runs on, as traces name it. */
export type BackendName = 'redis' | 'cluster' | 'sentinel' | 'sqlite' | 'memory' | 'postgres'

/**
 * The context of one store call on the tracing channel {@link CALL_CHANNEL}
 * (`diagnostics_channel.tracingChannel('durastate:call')`): `start`, `end`, `asyncStart`,
 * `asyncEnd`, and `error` before them on failure, as `tracePromise` publishes them. Names
 * and ids only: values are never in it (there is no `result`).
 */
export interface CallContext {
  /** The method: `commitExecutionTaskResult`, `set`, ... */
  operation: string
  store: 'worker' | 'kv'
  /**
   * Absent only on a method called without its store (`const { get } = kv; get(...)`), which
   * rejects `INVALID_INPUT`: there is no store to name a backend.
   */
  backend?: BackendName
  /**
   * Where there is a server: its host (a Sentinel store's: the master's, once connected).
   * A unix socket's path (Redis) or directory (a Postgres host such as `/var/run/postgresql`),
   * with no `serverPort`.
   */
  serverAddress?: string
  serverPort?: number
  /** The Redis database number, or the SQL database name. */
  database?: string
  /** WorkerStore calls (an id that is not a string is left out). */
  executionId?: string
  taskId?: string
  /** KV calls: the mount, and the key of calls on one key (left out when not a string). */
  mount?: string
  key?: string
  /** On failure (set before `error`): the DurastateError, with its `code`. */
  error?: DurastateError
}

/**
 * One event on the channel {@link CONNECTION_CHANNEL}. Published asynchronously: `connect`
 * can come after the first call on the connection has resolved, and a process that exits
 * right after its calls may not see it.
 */
export interface ConnectionEvent {
  /**
   * `connect`: the first connection; `drop`: the connection was lost; `reconnect`: connected
   * again to the same address; `failover`: connected to another address than before (a new
   * Sentinel master). Postgres (a pool): `connect` for its first connection, `drop` for a
   * connection lost, `reconnect` for the first one opened, or the first call
   * answered on one, after a drop. A Redis Cluster:
   * `connect` once; one `drop` when a node's connection is lost or a node cannot be reached,
   * then one `reconnect` once each such node (or the master that replaced it) is connected
   * again; never one per call retry, and no `drop` for a `TIMEOUT` alone.
   */
  type: 'connect' | 'drop' | 'reconnect' | 'failover'
  /**
   * `host:port` (a Cluster: its first seed node); a unix socket: its path (Redis) or its
   * directory (Postgres), with no port.
   */
  address: string | null
  /** `failover`: the address before. */
  previousAddress?: string | null
  /** `drop`: why. */
  error?: { code: ErrorCode; message: string }
  store: 'worker' | 'kv'
  backend: BackendName
}
