// Which JS runtime runs the tests (Node.js, Bun or Deno), and how the addon drives Redis
// in it: on Node.js, Redis over TCP runs on the JS thread's event loop (unless
// DURASTATE_REDIS_DRIVER=threads or =socket); on Bun and Deno, over the runtime's own socket
// (node:net). Every driver connects the same way (TLS, Sentinel, `durability: 'aof'`).
import { createRequire } from 'node:module'

const binding = createRequire(import.meta.url)('../../binding.js')

/** 'node', 'bun' or 'deno'. */
export const runtime = typeof globalThis.Bun !== 'undefined' ? 'bun' : typeof globalThis.Deno !== 'undefined' ? 'deno' : 'node'

/** The runtime's name as the addon's messages give it. */
export const runtimeName = { node: 'Node.js', bun: 'Bun', deno: 'Deno' }[runtime]

/** Whether the event-loop Redis driver can run in this process at all (Node.js on Unix). */
export const eventLoopAvailable = binding.debugRuntime().eventLoopDriver
