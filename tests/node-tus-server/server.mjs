// A third-party tus 1.0 server for the tests: @tus/server over @tus/file-store.
//
//   node server.mjs DIRECTORY
//
// Listens on 127.0.0.1, port 0 (the kernel picks one), and prints one JSON line
// `{"event": "listening", "port": N}` on stdout once it accepts connections. Uploads
// live in DIRECTORY as `{id}` (the bytes) and `{id}.json` (their info). The server
// announces only what @tus/file-store supports (no checksum extension). SIGTERM or
// SIGINT closes it.
import { FileStore } from '@tus/file-store'
import { Server } from '@tus/server'

const directory = process.argv[2]
if (!directory) {
  console.error('usage: node server.mjs DIRECTORY')
  process.exit(2)
}

const tus = new Server({ path: '/files', datastore: new FileStore({ directory }) })
const http = tus.listen({ host: '127.0.0.1', port: 0 }, () => {
  const { port } = http.address()
  console.log(JSON.stringify({ event: 'listening', port }))
})
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => http.close(() => process.exit(0)))
}
