'use strict'

// The socket side of the Redis JS socket driver (src/backend/redis_js.rs), for runtimes
// whose event loop the native code cannot poll (Bun, Deno). A thin shell over node:net:
// it opens one socket at a time, writes the buffers it is given and reports events to
// `emit(event, attempt, payload)` (`event` one of EVENT); every decision (TLS, the login,
// replies, deadlines, retries) is made by the native driver. The socket is never ref'd:
// the deadline timer holds the process open while calls wait, and an idle process exits.

const net = require('node:net')
const timers = require('node:timers')

// A store collected without `close()` while no call waits lets its transport go (the
// native driver deletes its references; no JS may run from its finalizer): the socket
// and the timers are closed here once the transport object is collected.
const abandoned = new FinalizationRegistry((shutdown) => shutdown())

/**
 * A timer's delay as runtimes take it: 1 ms to 2^31 - 1 ms. A longer one (a
 * `commandTimeout` of a month) would be set to 1 ms, firing again and again; at most the
 * limit, the deadline timer fires early and the driver, finding nothing due, arms it
 * again (a connect attempt is given up at the limit).
 */
function timerMs(ms) {
  return Math.min(Math.max(1, ms), 2 ** 31 - 1)
}

/** The events `emit` takes (src/backend/redis_js.rs `emit_callback`). */
const EVENT = { connect: 0, data: 1, error: 2, close: 3, timeout: 4, timer: 5, backoff: 6, write: 7 }

/** One driver's transport; `emit` is the driver's native event callback. */
function createTransport(emit) {
  let socket = null
  let attempt = 0
  let connectTimer = null
  let deadline = null
  let held = false
  let backoff = null
  let queued = false
  // Written by the driver (it keeps a pointer to the memory): waits[0] is 1 while a call
  // waits. The deadline timer is ref'd while it is, after every event and every write
  // the driver makes: the process is let go as soon as the last call settles, with no
  // idle check to schedule and no call into the driver for it (its continuations, run
  // before the event loop goes on, ref it again when they make calls).
  const shared = new ArrayBuffer(4)
  const waits = new Int32Array(shared)
  const hold = () => {
    const on = waits[0] !== 0
    if (deadline !== null && on !== held) {
      if (on) deadline.ref()
      else deadline.unref()
      held = on
    }
  }
  // Each event's callback answers with the bytes to write, if any.
  const write = () => {
    queued = false
    const out = emit(EVENT.write, attempt)
    if (out !== undefined && socket !== null) socket.write(out)
    hold()
  }
  const stopConnectTimer = () => {
    if (connectTimer !== null) timers.clearTimeout(connectTimer)
    connectTimer = null
  }
  const drop = () => {
    stopConnectTimer()
    if (socket !== null) {
      socket.removeAllListeners('data')
      socket.on('error', () => {})
      socket.destroy()
      socket = null
    }
  }
  const shutdown = () => {
    drop()
    for (const timer of [deadline, backoff]) if (timer !== null) timers.clearTimeout(timer)
    deadline = null
    held = false
    backoff = null
  }
  // Functions, not methods: the driver calls them without `this`. The object is held by
  // the driver only.
  const transport = {
    /** The memory the driver writes whether calls wait in (`waits`). */
    shared,
    /** Opens a socket to host:port for connect attempt `tag`; gives up after `ms`. */
    connect(host, port, ms, tag) {
      drop()
      attempt = tag
      // Keepalive: a peer that vanished without a word is found, not waited on for hours.
      const s = net.connect({ host, port, noDelay: true, keepAlive: true, keepAliveInitialDelay: 15_000 })
      socket = s
      s.unref()
      s.on('connect', () => {
        const out = emit(EVENT.connect, tag)
        if (out !== undefined) s.write(out)
        hold()
      })
      s.on('data', (bytes) => {
        const out = emit(EVENT.data, tag, bytes)
        if (out !== undefined) s.write(out)
        hold()
      })
      s.on('error', (err) => {
        emit(EVENT.error, tag, err.message || String(err))
        hold()
      })
      s.on('close', () => {
        emit(EVENT.close, tag)
        hold()
      })
      connectTimer = timers.setTimeout(() => {
        emit(EVENT.timeout, tag)
        hold()
      }, timerMs(ms))
      connectTimer.unref()
    },
    /** The login passed: the connect deadline no longer applies. */
    ready() {
      stopConnectTimer()
    },
    /** A call made while nothing else is in flight goes out at once. */
    write(bytes) {
      if (socket !== null) socket.write(bytes)
      hold()
    },
    /** Calls back with `write` in a microtask: the calls made in this tick go out together. */
    soon() {
      if (!queued) {
        queued = true
        queueMicrotask(write)
      }
      hold()
    },
    /** Closes the socket (its later events are ignored by the driver). */
    drop,
    /** Arms the deadline timer, ref'd while calls wait. */
    arm(ms) {
      if (deadline !== null) timers.clearTimeout(deadline)
      deadline = timers.setTimeout(() => {
        deadline = null
        emit(EVENT.timer, 0)
        hold()
      }, timerMs(ms))
      held = true
      hold()
    },
    /** The deadline timer ref'd or not as `waits` says (after a step that is no event). */
    hold,
    /** Calls back with `backoff` after `ms` (not ref'd: the deadline timer is). */
    backoff(ms) {
      if (backoff !== null) timers.clearTimeout(backoff)
      backoff = timers.setTimeout(() => {
        backoff = null
        emit(EVENT.backoff, 0)
        hold()
      }, timerMs(ms))
      backoff.unref()
    },
    /** The driver is done: the socket and the timers go. */
    shutdown,
  }
  abandoned.register(transport, shutdown)
  return transport
}

module.exports = { createTransport }
