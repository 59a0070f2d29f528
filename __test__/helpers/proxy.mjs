// Loopback TCP proxies: one counts client-to-server writes, to check that a store call
// is one round trip (all of its commands in one write, one reply back); one cuts a
// connection between a command reaching the server and its reply reaching the store.
import { createServer, connect } from 'node:net'

/**
 * A proxy to `targetPort` (a port, or a function that gives the port of each new
 * connection) that passes each chunk through `toServer(chunk, pipe)` and
 * `toClient(chunk, pipe)`, where `pipe` has the two sockets; by default they forward it.
 */
async function startProxy(targetPort, { toServer = (chunk, p) => p.upstream.write(chunk), toClient = (chunk, p) => p.client.write(chunk) }) {
  const sockets = new Set()
  const server = createServer((client) => {
    const upstream = connect(typeof targetPort === 'function' ? targetPort() : targetPort, '127.0.0.1')
    sockets.add(client).add(upstream)
    const pipe = { client, upstream }
    client.on('data', (chunk) => toServer(chunk, pipe))
    upstream.on('data', (chunk) => toClient(chunk, pipe))
    const end = () => {
      client.destroy()
      upstream.destroy()
    }
    client.on('error', end).on('close', end)
    upstream.on('error', end).on('close', end)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: server.address().port,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy()
        server.close(resolve)
      }),
  }
}

export async function startCountingProxy(targetPort) {
  let writes = 0
  const proxy = await startProxy(targetPort, {
    toServer: (chunk, { upstream }) => {
      writes++
      upstream.write(chunk)
    },
  })
  return {
    ...proxy,
    /** Client-to-server writes seen so far. */
    get writes() {
      return writes
    },
  }
}

/**
 * A proxy that, once armed with `cutNextReply()`, lets the next command through to the
 * server and closes that client's connection when the server's reply comes, instead of
 * passing it on: the command landed, and the store never hears so. Later connections
 * pass through untouched.
 */
export async function startCuttingProxy(targetPort) {
  let armed = false
  let cuts = 0
  const proxy = await startProxy(targetPort, {
    toClient: (chunk, { client, upstream }) => {
      if (!armed) return client.write(chunk)
      armed = false
      cuts++
      client.destroy()
      upstream.destroy()
    },
  })
  return {
    ...proxy,
    /** Drops the connection that carries the next reply, reply unsent. */
    cutNextReply() {
      armed = true
    },
    /** Replies cut so far. */
    get cuts() {
      return cuts
    },
  }
}

/**
 * A proxy whose new connections go to `target` (a port, settable at any time), while
 * each connection it carries stays with the server it was opened to, as a load balancer
 * or NAT keeps a flow: switching `target` is a replacement server at the same address.
 */
export async function startSwitchingProxy(targetPort) {
  let target = targetPort
  const proxy = await startProxy(() => target, {})
  return {
    ...proxy,
    set target(port) {
      target = port
    },
  }
}
