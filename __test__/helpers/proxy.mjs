// A loopback TCP proxy that counts client-to-server writes, to check that a store call
// is one round trip: all of its commands in one write, one reply back.
import { createServer, connect } from 'node:net'

export async function startCountingProxy(targetPort) {
  let writes = 0
  const sockets = new Set()
  const server = createServer((client) => {
    const upstream = connect(targetPort, '127.0.0.1')
    sockets.add(client).add(upstream)
    client.on('data', (chunk) => {
      writes++
      upstream.write(chunk)
    })
    upstream.on('data', (chunk) => client.write(chunk))
    const end = () => { client.destroy(); upstream.destroy() }
    client.on('error', end).on('close', end)
    upstream.on('error', end).on('close', end)
  })
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  return {
    port: server.address().port,
    /** Client-to-server writes seen so far. */
    get writes() { return writes },
    close: () => new Promise((resolve) => {
      for (const s of sockets) s.destroy()
      server.close(resolve)
    }),
  }
}
