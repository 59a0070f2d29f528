/**
 * durastate: durable execution state for Node.js workers, in Rust.
 *
 * A drop-in replacement for the `@idioteque/redis` WorkerStore (same keys, same JSON),
 * with exact millisecond TTLs, an atomic commit and one round trip per call, on Redis,
 * an embedded SQLite file, or memory.
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
  /** The server refused the credentials (`WRONGPASS`, `NOAUTH`). */
  | 'AUTH'
  /** The store was closed. */
  | 'DISPOSED'
  /** A bug in durastate (a caught Rust panic); please report it. */
  | 'INTERNAL'

/** Every error durastate throws or rejects with. */
export declare class DurastateError extends Error {
  readonly name: 'DurastateError'
  /** What went wrong, as a stable code to branch on. */
  readonly code: ErrorCode
}

/** The string the worker library stores for a step that returned `undefined`. */
export declare const EMPTY_EXECUTION_RESULT: '<empty_execution_result>'

/** Options every store takes. */
export interface StoreOptions {
  /** Time to live of every key written, in ms (exact; fractions round up). 0 or absent: never expire. */
  ttl?: number
  /** Prepended to every key. */
  prefix?: string
  /** Bound on every call end to end, in ms, including connecting or queueing. Default 5000. */
  commandTimeout?: number
}

/** Options of a Redis store. */
export interface RedisStoreOptions extends StoreOptions {
  /** Bound on establishing the connection (TCP, AUTH, SELECT, PING), in ms. Default 5000. */
  connectTimeout?: number
  /** How calls ride out a dropped connection. */
  retry?: RetryOptions
  /**
   * `'none'` (default): a write is acknowledged once the server has it in memory.
   * `'aof'`: once it is on the server's disk. The store checks at connect that the server
   * runs with `appendonly yes` and `appendfsync always`, and otherwise rejects every call
   * with `UNAVAILABLE`, naming the settings. Replication is not a durability guarantee:
   * a failover can lose writes a replica had not received.
   */
  durability?: 'none' | 'aof'
}

/** How a Redis store rides out a dropped connection (server restart, `CLIENT KILL`). */
export interface RetryOptions {
  /**
   * How many times a call that is safe to repeat (every call but `tryBeginExecutionTask`)
   * is sent again after its connection dropped, reconnecting with backoff in between and
   * never past `commandTimeout`. Default 3; 0 turns resending off.
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
}

/** Options of a store picked by URL: those of the backend the URL names. */
export type AnyStoreOptions = RedisStoreOptions & SqliteStoreOptions

/** A Redis server given as fields rather than a URL. */
export interface RedisConnectionOptions {
  /** Host name or IP address. Default `127.0.0.1`. */
  host?: string
  /** TCP port. Default 6379. */
  port?: number
  /** ACL user name. */
  username?: string
  /** Password (with or without `username`). */
  password?: string
  /** Database number. Default 0. */
  db?: number
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
 * {@link DurastateError}.
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
   * Unlike the other calls it is never sent again after a dropped connection (the first
   * `HSETNX` may have landed): it rejects with `UNAVAILABLE` instead.
   */
  tryBeginExecutionTask(executionId: string, taskId: string): Promise<boolean>
  /**
   * Stores a step's result as JSON and clears its in-progress marker, atomically.
   * `undefined` is stored as {@link EMPTY_EXECUTION_RESULT}. A value with no JSON form
   * rejects with `SERIALIZE` and writes nothing.
   */
  commitExecutionTaskResult(executionId: string, taskId: string, value: unknown): Promise<void>
  /** Whether the execution was begun and is not yet disposed or expired. */
  isExecutionInProgress(executionId: string): Promise<boolean>
  /** Whether the step is marked in progress. */
  isExecutionTaskInProgress(executionId: string, taskId: string): Promise<boolean>
  /** Deletes the execution's state (one `DEL` of its three keys). Unknown ids are a no-op. */
  disposeExecution(executionId: string): Promise<void>
  /**
   * Releases the connection or database. Calls in flight finish; later calls reject with
   * `DISPOSED`. Idempotent.
   */
  close(): Promise<void>
  /** Whether {@link close} was called. */
  readonly closed: boolean
}

/**
 * A store on Redis, synchronous and lazy: it validates its arguments (throwing
 * `INVALID_INPUT`) and connects on first use.
 *
 * @param target `redis://[user:pass@]host[:port][/db]` or fields; default `REDIS_URL`,
 *   then `redis://127.0.0.1:6379`.
 * @example
 * const worker = createWorker({ store: createRedisStore(process.env.REDIS_URL, { ttl: 86_400_000 }) })
 */
export declare function createRedisStore(
  target?: string | RedisConnectionOptions | null,
  options?: RedisStoreOptions | null,
): DurableWorkerStore

/**
 * A store in a SQLite file: durable, shared safely by processes on one machine.
 * Directories are created on first use.
 *
 * @param path Default `./.durastate/state.db`.
 */
export declare function createSqliteStore(path?: string | null, options?: SqliteStoreOptions | null): DurableWorkerStore

/** A store in this process's memory, with the same semantics (TTL included); nothing persists. */
export declare function createMemoryStore(options?: StoreOptions | null): DurableWorkerStore

/**
 * A store picked by URL: `redis://` or `rediss://` (Redis), `sqlite:<path>` or
 * `file:<path>` (SQLite), `memory:`. Without a URL: `DURASTATE_URL`, then `REDIS_URL`,
 * else the SQLite file `./.durastate/state.db`.
 */
export declare function createStore(url?: string | null, options?: AnyStoreOptions | null): DurableWorkerStore
