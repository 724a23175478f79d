// A small XMLHttpRequest over node:http, for the test harness only:
// phoenix.js releases before 1.7 run their LongPoll on XMLHttpRequest
// (found through `self`, else `window`), which Node has neither of. It
// covers what their Ajax uses: open, setRequestHeader, send, abort,
// timeout/ontimeout, onerror, onreadystatechange with readyState 4, status
// and responseText. A network error sets readyState 4 and status 0 and
// fires only onerror (a browser also fires readystatechange, which makes
// phoenix.js handle the failure twice); abort() fires nothing, so a
// request phoenix.js aborts while closing never calls back into it.
//
// A body goes with its Content-Length, as a browser sends it; with
// `options.bodyDelayMs` it follows the headers after that many ms, as on a
// real network where headers and body often arrive in separate segments
// (what opens the window for two POSTs of one session to overlap).
//
// Every request is reported to the onRequest hooks ({method, url,
// headers, body}) and every answer to the onAnswer hooks (the same plus
// status and text), so tests see what the client sent.

import http from "node:http"

export const options = {bodyDelayMs: 0}
export const hooks = {onRequest: [], onAnswer: []}

export class XMLHttpRequest {
  constructor() {
    this.readyState = 0
    this.status = 0
    this.responseText = ""
    this.timeout = 0
    this.onreadystatechange = null
    this.onerror = null
    this.ontimeout = null
    this.headers = {}
    this.done = false
  }

  open(method, url) {
    this.method = method
    this.url = url
    this.readyState = 1
  }

  setRequestHeader(name, value) { this.headers[name] = value }

  send(body) {
    const info = {method: this.method, url: this.url, headers: {...this.headers}, body: body ?? null}
    for (const f of hooks.onRequest) f(info)
    const data = body == null ? null : Buffer.from(body)
    const headers = {...this.headers}
    if (data) headers["Content-Length"] = String(data.length)
    const finish = (status, text, cb) => {
      if (this.done) return
      this.done = true
      clearTimeout(timer)
      this.status = status
      this.responseText = text
      this.readyState = 4
      for (const f of hooks.onAnswer) f({...info, status, text})
      cb && cb()
    }
    const timer = this.timeout > 0 ? setTimeout(() => {
      finish(0, "", () => this.ontimeout && this.ontimeout())
      this.req.destroy()
    }, this.timeout) : null
    this.req = http.request(this.url, {method: this.method, headers}, res => {
      const chunks = []
      res.on("data", c => chunks.push(c))
      res.on("end", () => finish(res.statusCode, Buffer.concat(chunks).toString("utf8"), () => this.onreadystatechange && this.onreadystatechange()))
      res.on("error", () => finish(0, "", () => this.onerror && this.onerror()))
    })
    this.req.on("error", () => finish(0, "", () => this.onerror && this.onerror()))
    if (!data) return this.req.end()
    if (options.bodyDelayMs > 0) {
      this.req.flushHeaders()
      setTimeout(() => this.req.end(data), options.bodyDelayMs)
    } else {
      this.req.end(data)
    }
  }

  abort() {
    this.done = true
    this.req && this.req.destroy()
  }
}

// install makes the shim what old phoenix.js finds: `self` (the global it
// looks XMLHttpRequest up on) and `self.XMLHttpRequest`. Call it before
// importing the old release (it reads `self` once, at load).
export function install() {
  if (typeof globalThis.self === "undefined") globalThis.self = globalThis
  globalThis.XMLHttpRequest = XMLHttpRequest
}
