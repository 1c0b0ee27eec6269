#!/usr/bin/env node
// Starts kinesis-local (kinesis-mock, npm) bound to 127.0.0.1 only: it binds 0.0.0.0
// itself and has no setting for the address, so every server it opens is redirected.
// Usage: KINESIS_MOCK_PLAIN_PORT=N KINESIS_MOCK_TLS_PORT=M node kinesis-local-loopback.js
// (every other KINESIS_MOCK_* / *_DURATION variable of kinesis-local works as documented).
'use strict'

const net = require('net')
const path = require('path')

const listen = net.Server.prototype.listen
net.Server.prototype.listen = function (...args) {
  // listen(port[, host][, backlog][, cb]) and listen({port, host}): force the host.
  if (args.length > 0 && typeof args[0] === 'object' && args[0] !== null) {
    args[0] = Object.assign({}, args[0], { host: '127.0.0.1' })
  } else if (typeof args[0] === 'number' || typeof args[0] === 'string') {
    if (typeof args[1] === 'string') {
      args[1] = '127.0.0.1'
    } else {
      args.splice(1, 0, '127.0.0.1')
    }
  }
  return listen.apply(this, args)
}

const pkg = path.dirname(require.resolve('kinesis-local/package.json'))
// Its self-signed certificate (for the TLS port) is looked up relative to the cwd by default.
if (process.env.KINESIS_MOCK_CERT_PATH === undefined) {
  process.env.KINESIS_MOCK_CERT_PATH = path.join(pkg, 'server.json')
}
// Streams become ACTIVE quickly in tests; callers may override.
for (const k of ['CREATE_STREAM_DURATION', 'DELETE_STREAM_DURATION', 'SPLIT_SHARD_DURATION',
  'MERGE_SHARDS_DURATION', 'UPDATE_SHARD_COUNT_DURATION']) {
  if (process.env[k] === undefined) process.env[k] = '50ms'
}

process.on('SIGTERM', () => process.exit(0))
process.on('SIGINT', () => process.exit(0))
require(path.join(pkg, 'main.js'))
