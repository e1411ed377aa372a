#!/usr/bin/env node
// A stock automerge-repo peer (Repo, DocHandle.broadcast, Presence) on a Ratatoskr
// server, driven by tests/interop over stdin/stdout.
//
//   node peer.js --url http://127.0.0.1:4151 [--token T] [--create | --find DOCUMENT_ID]
//
// Line protocol: one JSON object per line in each direction. Byte strings inside
// messages are written as {"$bytes": "<base64>"}.
//
// Output lines are either events, {"event": <name>, ...}, or replies to commands,
// {"reply": <cmd>, "id": <the command's id>, "ok": true, ...} or
// {"reply": <cmd>, "id": ..., "ok": false, "error": "<message>"}.
//
// Events
//   {"event":"ready", "peerId", "serverPeerId", "features", "user", "documentId",
//    "documentState"}
//       connected and authenticated; peerId is repo.peerId, which is the id the
//       server assigned (auth_ok.clientPeerId). documentId: the document opened
//       with --create/--find (and its DocHandle state: "ready" when created,
//       "unavailable" when found through the relay, which stores no documents),
//       else null.
//   {"event":"ephemeral", "documentId", "senderId", "message", "presence": bool}
//       DocHandle "ephemeral-message" on any opened document (Presence messages
//       included; "presence" says whether the payload has the "__presence" key).
//   {"event":"presence", "documentId", "kind", "peerId"?, "channel"?, "value"?,
//    "state"?, "pruned"?, "states"}
//       a Presence event (kind: snapshot | update | heartbeat | goodbye | pruning)
//       with "states" = the states after it, as returned by "peer-states".
//   {"event":"disconnected"}   the server connection closed
//   {"event":"fatal", "error"} an uncaught error; the process exits with status 1
//
// Commands ("id" is optional and echoed; "documentId" defaults to the document
// opened last)
//   {"cmd":"create", "initial"?: {...}}        repo.create()  -> {"documentId"}
//   {"cmd":"open", "documentId"}               repo.find() (accepting "unavailable":
//                                              the relay stores no documents)
//                                              -> {"documentId", "state"}
//   {"cmd":"broadcast-ephemeral", "documentId"?, "message"}   handle.broadcast(message)
//   {"cmd":"presence-start", "documentId"?, "state", "heartbeatMs"?, "peerTtlMs"?}
//                                              new Presence({handle}).start(...)
//   {"cmd":"presence-broadcast", "documentId"?, "channel", "value"}
//   {"cmd":"presence-animate", "documentId"?, "channel", "everyMs", "tag"?}
//                                              presence.broadcast(channel, n) with n = 0, 1, 2...
//                                              (with tag: the string `${tag}:${n}`)
//                                              every everyMs milliseconds (until presence-stop)
//   {"cmd":"presence-stop", "documentId"?}     sends goodbye
//   {"cmd":"reconnect", "abandon"?: bool}      a new socket for the same Repo (which
//                                              keeps its ephemeral sessionId and count);
//                                              abandon: the old one is left open, ignored
//                                              -> {"peerId": the id the server assigned
//                                                  the new connection}
//   {"cmd":"peer-states", "documentId"?}       -> {"states": {peerId: state},
//                                                  "peers": {peerId: {peerId,
//                                                   lastActiveAt, lastSeenAt, value}},
//                                                  "local": <own state>}
//   {"cmd":"quit"}                             replies, shuts the repo down, exits 0
// End of stdin quits too.

import { createInterface } from "node:readline"
import { parseArgs } from "node:util"

import { Presence, Repo } from "@automerge/automerge-repo"

import { RatatoskrNetworkAdapter } from "./ratatoskr-adapter.js"

const { values: args } = parseArgs({
  options: {
    url: { type: "string" },
    token: { type: "string" },
    create: { type: "boolean", default: false },
    find: { type: "string" },
  },
})
if (!args.url) {
  process.stderr.write("usage: node peer.js --url URL [--token T] [--create | --find ID]\n")
  process.exit(2)
}

// ------------------------------------------------------------------ output

function toJson(value) {
  return JSON.stringify(value, function (key, v) {
    const original = this[key]
    if (original instanceof Uint8Array) {
      return { $bytes: Buffer.from(original).toString("base64") }
    }
    return v
  })
}

function fromJson(line) {
  return JSON.parse(line, (key, v) =>
    v !== null && typeof v === "object" && Object.keys(v).length === 1 && "$bytes" in v
      ? new Uint8Array(Buffer.from(v.$bytes, "base64"))
      : v
  )
}

function emit(obj) {
  process.stdout.write(`${toJson(obj)}\n`)
}

function log(line) {
  process.stderr.write(`[peer.js] ${line}\n`)
}

// automerge-repo reports some errors with console.log: keep stdout for the protocol.
console.log = (...items) => console.error(...items)

process.on("uncaughtException", err => {
  emit({ event: "fatal", error: String(err?.stack ?? err) })
  process.exit(1)
})
process.on("unhandledRejection", err => {
  emit({ event: "fatal", error: String(err?.stack ?? err) })
  process.exit(1)
})

// ------------------------------------------------------------------ repo

const adapter = new RatatoskrNetworkAdapter(args.url, { token: args.token })
const auth = await adapter.authenticate()
const repo = new Repo({ network: [adapter], peerId: auth.clientPeerId })
await repo.networkSubsystem.whenReady()
adapter.on("peer-disconnected", () => emit({ event: "disconnected" }))

/** documentId -> {handle, presence} */
const docs = new Map()
let currentDocId = null

function track(handle) {
  const documentId = handle.documentId
  if (!docs.has(documentId)) {
    docs.set(documentId, { handle, presence: undefined })
    handle.on("ephemeral-message", ({ senderId, message }) => {
      const isPresence =
        message !== null && typeof message === "object" && "__presence" in message
      emit({ event: "ephemeral", documentId, senderId, message, presence: isPresence })
    })
  }
  currentDocId = documentId
  return documentId
}

async function create(initial) {
  const handle = repo.create(initial)
  await handle.whenReady()
  return track(handle)
}

// The relay stores no documents: it answers a request with doc-unavailable, so a
// document found through it is "unavailable" (ephemeral messages still flow).
function findHandle(documentId) {
  return repo.find(documentId, { allowableStates: ["ready", "unavailable"] })
}

function entry(cmd) {
  const documentId = cmd.documentId ?? currentDocId
  const doc = docs.get(documentId)
  if (!doc) throw new Error(`document ${documentId} is not open (use create or open)`)
  return doc
}

function peerStates(presence) {
  const peers = presence ? presence.getPeerStates().value : {}
  const states = Object.fromEntries(Object.entries(peers).map(([id, p]) => [id, p.value]))
  return { states, peers, local: presence ? presence.getLocalState() : null }
}

function startPresence(cmd) {
  const doc = entry(cmd)
  if (doc.presence?.running) throw new Error("presence already running on this document")
  const presence = new Presence({ handle: doc.handle })
  const documentId = doc.handle.documentId
  for (const kind of ["snapshot", "update", "heartbeat", "goodbye", "pruning"]) {
    presence.on(kind, e => {
      const { type: _type, ...fields } = e
      emit({ event: "presence", documentId, kind, ...fields, states: peerStates(presence).states })
    })
  }
  presence.start({
    initialState: cmd.state ?? {},
    heartbeatMs: cmd.heartbeatMs,
    peerTtlMs: cmd.peerTtlMs,
  })
  doc.presence = presence
}

function runningPresence(cmd) {
  const doc = entry(cmd)
  if (!doc.presence?.running) throw new Error("presence not started on this document")
  return doc.presence
}

// ------------------------------------------------------------------ commands

let quitting = false

async function shutdown(code) {
  if (quitting) return
  quitting = true
  try {
    await Promise.race([repo.shutdown(), new Promise(r => setTimeout(r, 2000))])
  } finally {
    process.exit(code)
  }
}

const commands = {
  create: async cmd => ({ documentId: await create(cmd.initial) }),
  open: async cmd => {
    const handle = await findHandle(cmd.documentId)
    return { documentId: track(handle), state: handle.state }
  },
  "broadcast-ephemeral": async cmd => {
    entry(cmd).handle.broadcast(cmd.message)
    return {}
  },
  "presence-start": async cmd => {
    startPresence(cmd)
    return {}
  },
  "presence-broadcast": async cmd => {
    runningPresence(cmd).broadcast(cmd.channel, cmd.value)
    return {}
  },
  "presence-animate": async cmd => {
    const presence = runningPresence(cmd)
    const doc = entry(cmd)
    let n = 0
    clearInterval(doc.animation)
    doc.animation = setInterval(() => {
      if (presence.running) {
        const value = cmd.tag === undefined ? n : `${cmd.tag}:${n}`
        n++
        presence.broadcast(cmd.channel, value)
      }
    }, cmd.everyMs)
    return {}
  },
  "presence-stop": async cmd => {
    clearInterval(entry(cmd).animation)
    runningPresence(cmd).stop()
    return {}
  },
  "peer-states": async cmd => peerStates(entry(cmd).presence),
  reconnect: async cmd => {
    const ok = await adapter.reconnect({ abandon: cmd.abandon === true })
    return { peerId: ok.clientPeerId }
  },
}

async function handle(line) {
  if (!line.trim()) return
  let cmd
  try {
    cmd = fromJson(line)
  } catch (err) {
    emit({ reply: null, ok: false, error: `bad JSON: ${err.message}` })
    return
  }
  if (cmd.cmd === "quit") {
    emit({ reply: "quit", id: cmd.id, ok: true })
    await shutdown(0)
    return
  }
  const fn = commands[cmd.cmd]
  if (!fn) {
    emit({ reply: cmd.cmd, id: cmd.id, ok: false, error: `unknown command ${cmd.cmd}` })
    return
  }
  try {
    emit({ reply: cmd.cmd, id: cmd.id, ok: true, ...(await fn(cmd)) })
  } catch (err) {
    emit({ reply: cmd.cmd, id: cmd.id, ok: false, error: String(err?.message ?? err) })
  }
}

let documentId = null
if (args.create) documentId = await create()
else if (args.find) documentId = track(await findHandle(args.find))
emit({
  event: "ready",
  peerId: repo.peerId,
  serverPeerId: adapter.serverPeerId,
  features: auth.features ?? null,
  user: auth.user ?? null,
  documentId,
  documentState: documentId === null ? null : docs.get(documentId).handle.state,
})
log(`ready as ${repo.peerId}`)

// Commands run one at a time, in order.
let queue = Promise.resolve()
const input = createInterface({ input: process.stdin, crlfDelay: Infinity })
input.on("line", line => {
  queue = queue.then(() => handle(line))
})
input.on("close", () => {
  queue = queue.then(() => shutdown(0))
})
