// An automerge-repo NetworkAdapter that speaks a Ratatoskr server's handshake.
//
//   const adapter = new RatatoskrNetworkAdapter("http://127.0.0.1:4151")   // or { token }
//   const auth = await adapter.authenticate()          // socket open, auth_ok received
//   const repo = new Repo({ network: [adapter], peerId: auth.clientPeerId })
//
// Wire (see docs/protocol.md): one WebSocket at <url>/sync, every frame one binary
// CBOR map. The first frame is {type:"auth", anonymous:true} or {type:"auth", token};
// the server answers {type:"auth_ok", peerId:<server>, clientPeerId:<us>, ...}. After
// that the server is our only automerge-repo peer: it is announced with
// `peer-candidate`, and every automerge-repo message (sync, request, doc-unavailable,
// ephemeral, remote-*) is passed through unchanged in both directions. Frames only
// a Ratatoskr server sends (peer_identity, peer_joined_doc, doc_presence_state,
// error, ...) mean nothing to automerge-repo: they are logged to stderr and dropped.
//
// Peer ids: the server assigns this connection's peer id (auth_ok.clientPeerId) and
// rewrites the senderId of everything we send with it, so the other peers know us
// only by that id. Give it to the Repo (`peerId` option) so that repo.peerId, the
// senderId of our frames and the keys other Presence peers use for us all agree;
// connect() warns on stderr when the Repo was given another id.
//
// Reconnection: when the socket closes, the server peer is reported disconnected
// and the adapter is done. `reconnect()` opens a new socket on the same Repo, as a
// stock reconnecting adapter does: the server peer is reported disconnected, then
// announced again once the new socket is authenticated. The Repo keeps its
// ephemeral sessionId and count across it (automerge-repo's NetworkSubsystem owns
// them). `reconnect({ abandon: true })` leaves the old socket open and ignored, as
// when a network path dies without anyone noticing: the server still thinks the
// old connection alive.

import { NetworkAdapter, cbor } from "@automerge/automerge-repo"
import WebSocket from "ws"

/** Message types automerge-repo's NetworkSubsystem accepts (isRepoMessage). */
const REPO_MESSAGE_TYPES = new Set([
  "sync",
  "request",
  "doc-unavailable",
  "ephemeral",
  "remote-subscription-change",
  "remote-heads-changed",
])

const AUTH_TIMEOUT_MS = 10_000

/** `http://host:port` (or ws://...) → `ws://host:port/sync`. */
export function socketUrl(url) {
  const u = new URL(url)
  const scheme = { "http:": "ws:", "https:": "wss:", "ws:": "ws:", "wss:": "wss:" }[u.protocol]
  if (!scheme) throw new Error(`expected an http(s):// or ws(s):// URL, got ${url}`)
  u.protocol = scheme
  const path = u.pathname.replace(/\/+$/, "")
  u.pathname = path.endsWith("/sync") ? path : `${path}/sync`
  u.hash = ""
  return u.toString()
}

function defaultLog(line) {
  process.stderr.write(`[ratatoskr-adapter] ${line}\n`)
}

/** A printable form of a decoded frame for the log (byte strings abbreviated). */
function describe(frame) {
  return JSON.stringify(frame, (key, value) =>
    value instanceof Uint8Array || value?.type === "Buffer"
      ? `<${value.length ?? value.data?.length} bytes>`
      : value
  )
}

export class RatatoskrNetworkAdapter extends NetworkAdapter {
  /**
   * @param {string} url  the server, http(s):// or ws(s)://; `/sync` is appended
   * @param {{token?: string, log?: (line: string) => void}} [options]
   *   no token: anonymous
   */
  constructor(url, { token, log = defaultLog } = {}) {
    super()
    this.url = socketUrl(url)
    this.token = token
    this.log = log
    /** auth_ok as received (peerId = the server's, clientPeerId = ours) */
    this.authOk = undefined
    this.serverPeerId = undefined
    this.socket = undefined
    this.#ready = false
    this.#connectCalled = false
    this.#announced = false
    this.#readyPromise = new Promise(resolve => {
      this.#resolveReady = resolve
    })
  }

  #ready
  #connectCalled
  #announced
  #readyPromise
  #resolveReady
  #authPromise

  /**
   * Open the socket and authenticate. Resolves with the auth_ok frame; rejects on
   * auth_error, an error frame, a closed socket or a timeout. Idempotent.
   */
  authenticate() {
    if (!this.#authPromise) this.#authPromise = this.#open()
    return this.#authPromise
  }

  /**
   * Leave the current socket (closed, or with `abandon` left open and ignored) and
   * open a new one; resolves with the new auth_ok once the server peer has been
   * announced again.
   */
  async reconnect({ abandon = false } = {}) {
    const old = this.socket
    this.socket = undefined
    if (this.#ready) {
      this.#ready = false
      this.emit("peer-disconnected", { peerId: this.serverPeerId })
    }
    this.#announced = false
    if (old !== undefined && !abandon) {
      await new Promise(resolve => {
        if (old.readyState === WebSocket.CLOSED) resolve()
        old.once("close", resolve)
        old.close(1000)
      })
    }
    this.#authPromise = this.#open()
    const frame = await this.#authPromise
    this.#announce()
    return frame
  }

  #open() {
    return new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url, { perMessageDeflate: false })
      ws.binaryType = "nodebuffer"
      this.socket = ws
      let settled = false
      const fail = err => {
        if (settled) return
        settled = true
        clearTimeout(timer)
        reject(err)
        ws.terminate()
      }
      const timer = setTimeout(
        () => fail(new Error(`no auth_ok from ${this.url} within ${AUTH_TIMEOUT_MS} ms`)),
        AUTH_TIMEOUT_MS
      )

      ws.on("open", () => {
        const auth =
          this.token === undefined
            ? { type: "auth", anonymous: true }
            : { type: "auth", token: this.token }
        ws.send(cbor.encode(auth))
      })
      ws.on("error", err => {
        this.log(`socket error: ${err.message}`)
        fail(err)
      })
      ws.on("close", (code, reason) => {
        this.log(`socket closed (code ${code}${reason.length ? `, ${reason}` : ""})`)
        fail(new Error(`${this.url} closed the connection during auth (code ${code})`))
        if (ws === this.socket) this.#onClose() // not a socket left by reconnect()
      })
      ws.on("message", (data, isBinary) => {
        if (ws !== this.socket) return // a socket left by reconnect({ abandon: true })
        if (!isBinary) {
          this.log(`ignoring a text frame: ${String(data).slice(0, 200)}`)
          return
        }
        let frame
        try {
          frame = cbor.decode(new Uint8Array(data))
        } catch (err) {
          this.log(`undecodable frame (${data.length} bytes): ${err.message}`)
          return
        }
        if (frame === null || typeof frame !== "object" || typeof frame.type !== "string") {
          this.log(`ignoring a frame that is not a typed map: ${describe(frame)}`)
          return
        }
        if (!settled) {
          if (frame.type === "auth_ok") {
            settled = true
            clearTimeout(timer)
            this.authOk = frame
            this.serverPeerId = frame.peerId
            this.log(
              `authenticated as ${frame.clientPeerId} on ${frame.peerId}` +
                ` (features: ${JSON.stringify(frame.features ?? null)})`
            )
            resolve(frame)
            this.#announce()
          } else if (frame.type === "auth_error" || frame.type === "error") {
            fail(new Error(`auth refused: ${frame.error}: ${frame.message}`))
          } else {
            this.log(`ignoring ${frame.type} before auth_ok: ${describe(frame)}`)
          }
          return
        }
        this.#receive(frame)
      })
    })
    return this.#authPromise
  }

  #receive(frame) {
    if (!REPO_MESSAGE_TYPES.has(frame.type)) {
      // peer_identity, peer_disconnected, peer_joined_doc, peer_left_doc,
      // doc_presence_state, error, ...: the server's own business, not automerge-repo's.
      this.log(`server frame: ${describe(frame)}`)
      return
    }
    if (frame.data !== undefined && !(frame.data instanceof Uint8Array)) {
      this.log(`dropping ${frame.type} whose data is not a byte string: ${describe(frame)}`)
      return
    }
    this.emit("message", frame)
  }

  /** Announce the server once both the Repo called connect() and auth_ok arrived. */
  #announce() {
    if (this.#announced || !this.#connectCalled || !this.authOk) return
    this.#announced = true
    if (this.peerId !== undefined && this.peerId !== this.authOk.clientPeerId) {
      this.log(
        `warning: the Repo's peerId ${this.peerId} differs from the id the server assigned` +
          ` (${this.authOk.clientPeerId}); peers will know this repo by the latter`
      )
    }
    this.emit("peer-candidate", {
      peerId: this.serverPeerId,
      // The relay keeps no documents and no storage: nothing to persist sync state for.
      peerMetadata: { isEphemeral: true },
    })
    this.#ready = true
    this.#resolveReady()
  }

  #onClose() {
    if (this.#ready) {
      this.#ready = false
      this.emit("peer-disconnected", { peerId: this.serverPeerId })
    }
    this.emit("close")
  }

  isReady() {
    return this.#ready
  }

  whenReady() {
    return this.#readyPromise
  }

  connect(peerId, peerMetadata) {
    this.peerId = peerId
    this.peerMetadata = peerMetadata
    this.#connectCalled = true
    this.authenticate().then(
      () => this.#announce(),
      err => this.log(`cannot connect: ${err.message}`)
    )
  }

  send(message) {
    const ws = this.socket
    if (!this.#ready || ws === undefined || ws.readyState !== WebSocket.OPEN) {
      this.log(`not connected: dropping ${message.type} for ${message.documentId}`)
      return
    }
    if (message.data !== undefined && !(message.data instanceof Uint8Array)) {
      throw new Error(`${message.type} message data must be a Uint8Array`)
    }
    ws.send(cbor.encode(message))
  }

  disconnect() {
    const ws = this.socket
    if (ws !== undefined && ws.readyState <= WebSocket.OPEN) ws.close(1000)
  }
}
