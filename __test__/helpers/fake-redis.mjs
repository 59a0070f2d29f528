// A scripted Redis on a loopback socket (plain TCP, or TLS with `tls: { cert, key }`): it
// reads the commands a store sends (RESP arrays of bulk strings) and answers each with
// what `answer(args)` returns (RESP text, written as is), or nothing for `null`; `{ close:
// text }` writes the text and closes the connection in the same go (a server that closes
// right after a reply). For replies no real server gives: wrong types, push frames.
import { createServer } from 'node:net'
import { createServer as createTlsServer } from 'node:tls'

/** The whole commands in `buffer` ([[args...], ...]) and the bytes after them. */
function parseCommands(buffer) {
  const commands = []
  let at = 0
  for (;;) {
    if (at >= buffer.length) break
    const lineEnd = buffer.indexOf('\r\n', at)
    if (lineEnd < 0) break
    const count = Number(buffer.subarray(at + 1, lineEnd).toString())
    let pos = lineEnd + 2
    const args = []
    for (let i = 0; i < count && pos >= 0; i++) {
      const end = buffer.indexOf('\r\n', pos)
      if (end < 0) {
        pos = -1
        break
      }
      const length = Number(buffer.subarray(pos + 1, end).toString())
      if (buffer.length < end + 2 + length + 2) {
        pos = -1
        break
      }
      args.push(buffer.subarray(end + 2, end + 2 + length).toString('latin1'))
      pos = end + 2 + length + 2
    }
    if (pos < 0) break
    commands.push(args)
    at = pos
  }
  return [commands, buffer.subarray(at)]
}

/**
 * Starts the fake server. `answer(args)`: the RESP text for a command (`args[0]` upper
 * case), `{ close: text }`, or `null` for no reply. `PING` is answered `+PONG` when
 * `answer` gives `undefined`. Returns `{ url, port, commands, close }`; `commands` logs every
 * command's name.
 */
export async function startFakeRedis(answer, { tls } = {}) {
  const sockets = new Set()
  const commands = []
  const onSocket = (socket) => {
    sockets.add(socket)
    socket.on('close', () => sockets.delete(socket))
    socket.on('error', () => {})
    let pending = Buffer.alloc(0)
    socket.on('data', (chunk) => {
      const [parsed, rest] = parseCommands(Buffer.concat([pending, chunk]))
      pending = rest
      let out = ''
      for (const args of parsed) {
        args[0] = args[0].toUpperCase()
        commands.push(args[0])
        const reply = answer(args)
        if (typeof reply === 'string') out += reply
        else if (reply?.close !== undefined) return socket.end(out + reply.close)
        else if (reply === undefined && args[0] === 'PING') out += '+PONG\r\n'
      }
      if (out) socket.write(out)
    })
  }
  const server = tls ? createTlsServer(tls, onSocket) : createServer(onSocket)
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address()
  return {
    port,
    url: `${tls ? 'rediss' : 'redis'}://127.0.0.1:${port}`,
    commands,
    close: () =>
      new Promise((resolve) => {
        for (const socket of sockets) socket.destroy()
        server.close(() => resolve())
      }),
  }
}
