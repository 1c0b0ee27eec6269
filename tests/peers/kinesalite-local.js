#!/usr/bin/env node
// Starts kinesalite bound to 127.0.0.1 only (its own CLI binds 0.0.0.0).
// Usage: node kinesalite-local.js --port N [--path DIR] [--createStreamMs MS] [--shardLimit N]
// Prints "listening 127.0.0.1:PORT" on stdout once it accepts connections.
'use strict'

const args = process.argv.slice(2)
const opts = {}
for (let i = 0; i < args.length; i += 2) {
  const key = args[i].replace(/^--/, '')
  const value = args[i + 1]
  if (value === undefined) {
    console.error('missing value for ' + args[i])
    process.exit(2)
  }
  opts[key] = /^\d+$/.test(value) ? Number(value) : value
}
const port = opts.port || 4567
delete opts.port

// Streams become ACTIVE quickly in tests; callers may override.
if (opts.createStreamMs === undefined) opts.createStreamMs = 50
if (opts.deleteStreamMs === undefined) opts.deleteStreamMs = 50
if (opts.updateStreamMs === undefined) opts.updateStreamMs = 50

const server = require('kinesalite')(opts)
server.listen(port, '127.0.0.1', () => {
  const a = server.address()
  console.log('listening ' + a.address + ':' + a.port)
})
server.on('error', (err) => {
  console.error('kinesalite: ' + err.message)
  process.exit(1)
})

// Close the LevelDB store cleanly so a restart on the same --path keeps the stream.
function stop() {
  server.close(() => process.exit(0))
  setTimeout(() => process.exit(0), 2000).unref()
}
process.on('SIGTERM', stop)
process.on('SIGINT', stop)
