// @ts-check

const KEY = "deploysync"
const me = /** @type {HTMLScriptElement | null} */ (document.querySelector("script[data-deploysync]"))
const data = me?.dataset || {}
const nav = /** @type {any} */ (self).navigation

const pageId = document.querySelector("meta[name=deployment-id]")?.getAttribute("content")
const ID = { "X-Deployment-Id": pageId || "" }
const HEADERS = { "X-Deploysync": "navigate", ...ID }
const OWN = { ...HEADERS, "X-Deploysync-Router": "1" }

/** @param {string} href */
const abs = (href) => new URL(href, document.baseURI).href
/** @param {string} href */
const here = (href) => abs(href).split("#")[0] == location.href.split("#")[0]
/** @param {Element | null} el */
const off = (el) => el?.closest("[data-deploysync=off]")
/** @param {string} name @param {object} detail @param {boolean} [cancelable] */
const dispatch = (name, detail, cancelable) => document.dispatchEvent(new CustomEvent(KEY + ":" + name, { detail, cancelable }))

/** @param {any} el @param {any} [n] */
const script = (el, n) => {
  const s = document.createElement("script")
  for (const a of el.attributes) s.setAttribute(a.name, a.value)
  if (n && el.nonce == n) s.nonce = me?.nonce || n
  s.text = el.textContent
  s.async = el.hasAttribute("async")
  return s
}

class Router {
  stale = false
  last = 0
  /** @type {Promise<boolean> | null} */
  req = null
  ctl = new AbortController()
  /** @type {Map<string, Promise<any>>} */
  cache = new Map()
  /** @type {Record<string, [number, number]>} */
  pos = {}
  key = "" + Date.now()
  from = location.href
  sub = null
  u = new URL(location.href)
  bc = new BroadcastChannel(KEY)

  constructor() {
    let g
    try {
      g = JSON.parse(sessionStorage[KEY])
      delete sessionStorage[KEY]
    } catch {}
    this.guard = g?.id == pageId && Date.now() - g.t < 6e4 && performance.navigation.type != 2
    this.client = data.routing == "client" && !this.guard
    this.external = data.routing == "external"
  }

  /** @returns {any[][]} */
  listeners() {
    const d = document
    return [
      [self, "error", this.onError, true],
      [self, "unhandledrejection", this.onRejection],
      [self, "vite:preloadError", this.hint],
      [self, "pageshow", this.onShow],
      [self, "popstate", this.onPop],
      [nav, "navigate", this.onNavigate],
      [d, "visibilitychange", this.onVisible],
      [this.bc, "message", this.onMessage],
      ...(this.client ? [[self, "click", this.onCapture, true], [self, "submit", this.onCapture, true], [d, "mouseover", this.onHover], [self, "pagehide", this.onHide]] : []),
      ...(this.external ? [
        [self, "submit", this.onSubmitSeen, true],
        [nav, "navigatesuccess", this.onMoved],
        [d, "htmx:configRequest", this.onHtmxRequest],
        [d, "htmx:beforeOnLoad", this.onHtmxLoad],
        [d, "htmx:historyCacheMiss", this.onHtmxRestore],
        [d, "htmx:historyCacheMissLoadError", this.onHtmxRestored],
        [d, "htmx:config:request", this.onHtmxRequest],
        [d, "htmx:before:response", this.onHtmxLoad],
        [d, "turbo:before-fetch-request", this.onTurboRequest],
        [d, "turbo:before-fetch-response", this.onTurboResponse],
      ] : []),
    ]
  }

  start() {
    if (this.on) return
    this.on = true
    for (const [t, type, fn, capture] of this.listeners()) t?.addEventListener(type, fn, capture)
    this.timer = +data.checkInterval > 0 && setInterval(this.check, +data.checkInterval * 1e3)
    this.client && history.replaceState({ ...history.state, ds: this.key }, "")
  }

  stop() {
    if (!this.on) return
    this.on = false
    for (const [t, type, fn, capture] of this.listeners()) t?.removeEventListener(type, fn, capture)
    clearInterval(this.timer)
    this.ctl.abort()
    this.client && this.onHide()
  }

  /** @returns {Promise<boolean>} */
  check = (reason = "check") =>
    (this.req ||= fetch(data.versionUrl, { cache: "no-store", headers: ID })
      .then((r) => r.json())
      .then((v) => v.id && (v.outdated ?? v.id != pageId) && this.mark(v.id, reason))
      .catch(() => reason == "asset" && this.mark(null, "check-failed"))
      .then(() => ((this.req = null), (this.last = Date.now()), this.stale)))

  hint = () => this.stale || this.check("asset")

  /** @param {string | null} serverId @param {string} reason */
  mark(serverId, reason) {
    if (this.stale || (this.guard && performance.now() < 6e4)) return
    this.stale = true
    dispatch("stale", { pageId, serverId, reason })
    serverId && reason != "tab" && this.bc.postMessage(serverId)
  }

  /** @param {Response | XMLHttpRequest} r @returns {boolean} */
  seen(r) {
    const h = (n) => (r instanceof Response ? r.headers.get(n) : r.getResponseHeader(n))
    const id = h("X-Deployment-Id")
    const reload = r.status == 409 && h("X-Deploysync") == "reload"
    reload ? this.mark(id, "409") : id && id != pageId && this.check("response")
    return reload
  }

  onError = (e) => (e.target.src || e.target.href)?.startsWith?.(abs(data.staticUrl)) && this.hint()

  onRejection = (e) => /dynamically imported|module script/i.test(e.reason?.message) && this.hint()

  onVisible = () => !document.hidden && Date.now() - this.last > 3e4 && this.check()

  onMoved = () => performance.now() > 3e4 && this.onVisible()

  onMessage = (e) => this.stale || e.data == pageId || ((this.req = null), this.check("tab"))

  onShow = (e) => (e.persisted || performance.navigation.type == 2) && this.check().then((s) => s && performance.now() - (e.persisted && e.timeStamp) < 1e3 && this.full(location.href, "reload"))

  onPop = (e) => {
    if (here(this.from)) return
    this.from = location.href
    this.stale ? this.full(location.href, "reload") : this.client && this.visit(location.href, { pop: e.state?.ds || "" })
  }

  /** @param {string} url @param {Element | "push" | "replace" | "reload" | "browser"} [how] @param {any} [sub] */
  full(url, how = "push", sub) {
    this.ctl.abort()
    try {
      if (this.stale || this.guard) sessionStorage[KEY] = JSON.stringify({ id: pageId, t: Date.now() })
    } catch {}
    dispatch("before-reload", { url, pageId })
    if (how == "browser") return
    const same = !(how instanceof HTMLFormElement) && here(url)
    this.bye = same ? 2 : 1
    same && history[how != "replace" && url != location.href ? "pushState" : "replaceState"](history.state, "", url)
    if (how instanceof HTMLFormElement) {
      addEventListener("submit", (e) => e.stopImmediatePropagation(), { capture: true, once: true })
      if (sub?.form != how) sub = null
      else sub.disabled = false
      how.requestSubmit(sub)
    } else location[same ? "reload" : how == "replace" ? how : "assign"](url)
  }

  /** @param {Event} e */
  link(e) {
    const a = e.target instanceof Element && e.target.closest("a[href]")
    return a instanceof HTMLAnchorElement && a.origin == location.origin && /^(_self)?$/.test(a.target) && !a.hasAttribute("download") && !off(a) && a
  }

  click = (/** @type {MouseEvent} */ e) => {
    const a = this.link(e)
    if (!a || e.defaultPrevented || e.button || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey || (/#/.test(a.href) && here(a.href))) return
    if (this.stale) return this.full(a.href, "browser")
    e.preventDefault()
    this.visit(a.href)
  }

  submit = (/** @type {SubmitEvent} */ e) => {
    const f = e.target
    const s = e.submitter
    if (e.defaultPrevented || !(f instanceof HTMLFormElement) || off(f) || off(s)) return
    const at = (/** @type {string} */ n) => s?.getAttribute("form" + n) || f.getAttribute(n) || ""
    const method = at("method").toUpperCase()
    const url = new URL(abs(at("action") || location.href))
    if (url.origin != location.origin || method == "DIALOG" || !/^(_self)?$/.test(at("target"))) return
    const body = new FormData(f, s)
    const params = new URLSearchParams(/** @type {any} */ (body))
    if (method != "POST") url.search = "" + params
    if (this.stale) return this.full(url.href, "browser")
    e.preventDefault()
    this.visit(url.href, method == "POST" ? { method, body: /multipart/.test(at("enctype")) ? body : params, form: f, sub: s } : {})
  }

  onHover = (/** @type {MouseEvent} */ e) => {
    const a = this.link(e)
    if (!a || this.stale || this.cache.has(a.href) || here(a.href) || !("prefetch" in data || a.closest("[data-deploysync-prefetch]"))) return
    this.cache.size > 7 && this.cache.clear()
    const k = a.href
    const p = fetch(k, { headers: OWN }).catch(() => {})
    this.cache.set(k, p)
    setTimeout(() => this.cache.get(k) == p && this.cache.delete(k), 1e4)
  }

  /** @param {string} url @param {any} [o] */
  async visit(url, o = {}) {
    const { form, sub, pop } = o
    if (!dispatch("before-navigate", { url, method: o.method || "GET" }, pop == null)) return
    if (this.stale) return this.full(url, form, sub)
    this.ctl.abort()
    const ctl = (this.ctl = new AbortController())
    const hit = !form && this.cache.get(url)
    this.cache.clear()
    document.documentElement.ariaBusy = "true"
    let res
    try {
      res = (await hit) || (await fetch(url, { ...o, headers: OWN, signal: ctl.signal }))
      const h = (n) => res.headers.get(n)
      const to = h("X-Deploysync-Location")
      const d = h("X-Deploysync-Download")
      const html = d == null && /html/.test(h("Content-Type"))
      url = to || res.url + new URL(url).hash
      if (this.seen(res)) throw (res = res.redirected)
      if (to || ((!form || res.redirected) && (this.stale || !html || h("X-Deployment-Id") != pageId))) throw 0
      if (html) {
        const doc = new DOMParser().parseFromString(await res.text(), "text/html")
        if (ctl == this.ctl) await this.render(doc, url, pop)
      } else if (res.status != 204) {
        const a = document.createElement("a")
        a.href = URL.createObjectURL(await res.blob())
        if (d != null) a.download = decodeURIComponent(d)
        a.click()
      }
    } catch {
      if (!ctl.signal.aborted) this.full(url, !res && form, sub)
    }
    if (ctl == this.ctl) document.documentElement.ariaBusy = null
  }

  /** @param {Document} doc @param {string} url @param {string} [pop] */
  async render(doc, url, pop) {
    this.pos[this.key] = [scrollX, scrollY]
    this.key = pop ?? "" + Date.now()
    history.scrollRestoration = "manual"
    pop ?? history[here(url) ? "replaceState" : "pushState"]({ ds: this.key }, "", url)
    const key = (el) => (el.localName == "script" ? el.getAttribute("src") || el.textContent : el.outerHTML)
    const old = new Map([...document.head.children].map((el) => [key(el), el]))
    const n = doc.querySelector("script[data-deploysync]")?.getAttribute("nonce")
    const loads = []
    for (const el of [...doc.head.children]) {
      if (old.delete(key(el))) continue
      const e = el.localName == "script" ? script(el, n) : el
      if (e.matches("link[rel~=stylesheet]")) loads.push(new Promise((r) => (e.addEventListener("load", r), e.addEventListener("error", r))))
      document.head.append(e)
    }
    await Promise.all(loads)
    for (const el of old.values()) el.hasAttribute("src") || el.remove()
    document.body.replaceWith(doc.body)
    for (const s of document.body.querySelectorAll("script")) s.replaceWith(script(s, n))
    const target = document.getElementById(decodeURIComponent(location.hash.slice(1)))
    const p = this.pos[pop]
    p ? scrollTo(...p) : target ? target.scrollIntoView() : scrollTo(0, 0)
    document.querySelector("[autofocus]")?.["focus"]?.()
    const live = Object.assign(document.createElement("p"), { role: "status", style: "position:fixed;clip-path:inset(50%)" })
    document.body.append(live)
    setTimeout(() => (live.textContent = document.title), 99)
    dispatch("navigated", { url: location.href })
  }

  onCapture = (e) => (removeEventListener(e.type, this.onLast), addEventListener(e.type, this.onLast))

  onLast = (e) => this.on && this[e.type](e)

  onHide = () => (history.scrollRestoration = "auto")

  onSubmitSeen = (/** @type {SubmitEvent} */ e) => (this.sub = e.submitter)

  onNavigate = (e) => {
    const { url, sameDocument } = e.destination
    this.from = location.href
    if (this.bye) return this.bye--, e.stopImmediatePropagation()
    if (!this.external || here(url)) return
    if (this.stale && (navigator.userActivation?.isActive ?? 1) && e.canIntercept && e.navigationType == "push" && !e.formData && e.downloadRequest == null) {
      e.stopImmediatePropagation()
      sameDocument && (e.preventDefault(), this.full(url, e.navigationType))
    }
  }

  onHtmxRequest = ({ detail: d }) => {
    const h = (d.ctx?.request || d).headers
    if (/(^|,)HX-(Boo|Hist)/.test("" + Object.keys(h))) Object.assign(h, HEADERS)
  }

  onHtmxRestore = (e) => {
    for (const k in HEADERS) e.detail.xhr.setRequestHeader(k, HEADERS[k])
  }

  onHtmxRestored = (e) => this.seen(e.detail.xhr) && this.full(location.href, "reload")

  onHtmxLoad = (e) => {
    const { xhr, ctx, pathInfo, requestConfig } = e.detail
    const q = ctx?.request || requestConfig
    const r = xhr || ctx.response.raw
    const a = (pathInfo || q).anchor
    const u = r.responseURL || r.url
    if (/(^|,)HX-(Boo|Hist)/.test("" + Object.keys(q.headers)) && (this.seen(r) || (this.stale && !/post/i.test(q.verb || q.method)))) {
      e.preventDefault()
      this.full(u + (a ? "#" + a : ""), !(r.redirected ?? u != abs(pathInfo.finalRequestPath).split("#")[0]) && (q.elt || q.form), this.sub)
    }
  }

  onTurboRequest = (e) => {
    const h = e.detail.fetchOptions.headers
    if (e.target.matches("html, form")) h["X-Sec-Purpose"] || (this.u = e.detail.url)
    else if (h["Turbo-Frame"]) return
    Object.assign(h, HEADERS)
  }

  onTurboResponse = (e) => {
    const r = e.detail.fetchResponse.response
    const t = e.target
    const s = this.seen(r)
    if (t.ariaBusy && (t.localName == "form" ? s : t.localName == "html" && (s || this.stale) && (r.redirected || r.url == this.u.href.split("#")[0]))) {
      e.preventDefault()
      this.full(r.url + this.u.hash, !r.redirected && t, this.sub)
    }
  }
}

if (!(KEY in self)) {
  const router = new Router()
  router.start()
  const h = /** @type {any} */ (history)
  if (!nav)
    for (const m of ["push", "replace"]) {
      const f = h[m + "State"]
      h[m + "State"] = (...a) =>
        (f.apply(h, a), router.on && router.external && router.stale && m == "push" && (navigator.userActivation?.isActive ?? 1) && a[2] && !here(router.from) ? router.full(location.href, "reload") : (router.from = location.href))
    }
  self[KEY] = {
    get stale() { return router.stale },
    check: router.check,
    navigate: (/** @type {string} */ url) => router[router.client ? "visit" : "full"](abs(url)),
    router,
  }
}
