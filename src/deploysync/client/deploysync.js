// @ts-check
/**
 * deploysync client: once a page is stale (outdated frontend), the next navigation is a full
 * load. Modes: server (detect), client (own router), external. See PROTOCOL.md.
 */

const KEY = "deploysync"
const data = /** @type {HTMLElement | null} */ (document.querySelector("script[data-deploysync]"))?.dataset || {}

const config = {
  /** server, client (own router) or external */
  routing: data.routing || "server",
  /** seconds between version checks */
  interval: +(data.checkInterval || 0),
  versionUrl: data.versionUrl || "/_deploysync/version",
  /** prefetch every link on hover */
  prefetch: "prefetch" in data,
  staticUrl: data.staticUrl || "/static/",
}
const pageId = document.querySelector("meta[name=deployment-id]")?.getAttribute("content")
const HEADERS = { "X-Deploysync": "navigate", "X-Deployment-Id": pageId || "" }

/** @param {string} href */
const abs = (href) => new URL(href, document.baseURI).href
/** @param {string} href */
const here = (href) => abs(href).split("#")[0] == location.href.split("#")[0]
/** @param {Element | null} el */
const off = (el) => el?.closest("[data-deploysync=off]")
/** @param {any} t */
const formOf = (t) => (t instanceof HTMLFormElement ? t : undefined)
/** @param {string} name @param {object} detail */
const dispatch = (name, detail) => document.dispatchEvent(new CustomEvent(KEY + ":" + name, { detail, cancelable: true }))

/** A runnable copy. @param {Element} el */
const script = (el) => {
  const s = document.createElement("script")
  for (const a of el.attributes) s.setAttribute(a.name, a.value)
  s.text = el.textContent || ""
  s.async = el.hasAttribute("async")
  return s
}

/** Submit natively, unseen by routers. @param {HTMLFormElement} form @param {any} sub */
const submit = (form, sub) => {
  addEventListener("submit", (e) => e.stopImmediatePropagation(), { capture: true, once: true })
  if (sub?.form != form) sub = null
  sub?.removeAttribute("disabled") // Turbo disabled it
  form.requestSubmit(sub)
}

class Router {
  stale = false
  on = false
  last = 0
  /** @type {Promise<boolean> | null} */
  req = null
  /** @type {AbortController | undefined} */
  ctl
  /** @type {Map<string, Promise<any>>} */
  cache = new Map()
  /** @type {Record<string, number[]>} */
  pos = {}
  key = "" + Date.now()
  page = location.pathname + location.search
  /** @type {any} */
  sub
  timer = 0
  bc = self.BroadcastChannel && new BroadcastChannel(KEY)

  constructor() {
    let g
    try {
      g = JSON.parse(sessionStorage[KEY])
      sessionStorage.removeItem(KEY)
    } catch {}
    // we fled this id and got it again: browser navigation, no loop
    this.guard = g?.id == pageId && Date.now() - g.t < 6e4
    this.client = config.routing == "client" && !this.guard
    this.external = config.routing == "external" && !this.guard
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
      [d, "visibilitychange", this.onVisible],
      [this.bc, "message", this.onMessage],
      ...(this.client ? [[d, "click", this.onClick], [d, "submit", this.onSubmit], [d, "mouseover", this.onHover]] : []),
      ...(this.external
        ? [
            [self, "submit", this.onSubmitSeen, true],
            [/** @type {any} */ (window).navigation, "navigate", this.onNavigate],
            [d, "htmx:configRequest", this.onHtmxRequest],
            [d, "htmx:beforeOnLoad", this.onHtmxLoad],
            [d, "turbo:before-fetch-request", this.onTurboRequest],
            [d, "turbo:before-fetch-response", this.onTurboResponse],
          ]
        : []),
    ]
  }

  start() {
    if (this.on) return
    this.on = true
    for (const [t, type, fn, capture] of this.listeners()) t?.addEventListener(type, fn, capture)
    if (config.interval > 0) this.timer = setInterval(this.check, config.interval * 1e3)
    if (this.client) {
      history.scrollRestoration = "manual"
      history.replaceState({ ...history.state, ds: this.key }, "")
    }
  }

  stop() {
    if (!this.on) return
    this.on = false
    for (const [t, type, fn, capture] of this.listeners()) t?.removeEventListener(type, fn, capture)
    clearInterval(this.timer)
    this.ctl?.abort()
    if (this.client) history.scrollRestoration = "auto"
  }

  /** Resolves to stale. */
  check = (hint = false) =>
    (this.req ||= fetch(config.versionUrl, { cache: "no-store" })
      .then((r) => r.json())
      .then((v) => {
        config.staticUrl = v.static_url || config.staticUrl
        if (v.id != pageId) this.mark(v.id, hint ? "asset" : "check")
      })
      .catch(() => hint && this.mark(null, "check-failed"))
      .then(() => {
        this.req = null
        this.last = Date.now()
        return this.stale
      }))

  hint = () => this.stale || this.check(true)

  /** @param {string | null} serverId @param {string} reason */
  mark(serverId, reason) {
    if (this.stale || this.guard) return
    this.stale = true
    dispatch("stale", { pageId, serverId, reason })
    if (serverId && reason != "tab") this.bc?.postMessage(serverId)
  }

  /** True for 409. @param {number} status @param {(name: string) => string | null} header */
  seen(status, header) {
    const id = header("X-Deployment-Id")
    const reload = status == 409 && header("X-Deploysync") == "reload"
    if (reload || (id && id != pageId)) this.mark(id, reload ? "409" : "response")
    return reload
  }

  onError = (e) => (e.target.src || e.target.href || "").startsWith?.(abs(config.staticUrl)) && this.hint()

  onRejection = (e) => /dynamically imported|module script/i.test(e.reason?.message) && this.hint()

  onVisible = () => document.visibilityState == "visible" && Date.now() - this.last > 3e4 && this.check()

  onMessage = (e) => typeof e.data == "string" && e.data != pageId && this.mark(e.data, "tab")

  // back/forward (bfcache, or the HTTP cache despite no-cache) is a navigation
  onShow = (/** @type {PageTransitionEvent} */ e) =>
    (e.persisted || /** @type {any} */ (performance.getEntriesByType("navigation")[0])?.type == "back_forward") &&
    this.check().then((s) => s && this.full(location.href, "reload"))

  onPop = (/** @type {PopStateEvent} */ e) => {
    if (this.stale) this.full(location.href, "reload")
    else if (this.client && location.pathname + location.search != this.page) {
      this.pos[this.key] = [scrollX, scrollY]
      this.visit(location.href, { pop: e.state?.ds || "" })
    }
  }

  /** Leave (loop guard noted). @param {string} url @param {HTMLFormElement | "reload" | "browser"} [form] @param {any} [sub] */
  full(url, form, sub) {
    try {
      if (this.stale) sessionStorage[KEY] = JSON.stringify({ id: pageId, t: Date.now() })
    } catch {}
    dispatch("before-reload", { url, pageId })
    form == "reload" ? location.reload() : form instanceof HTMLFormElement ? submit(form, sub) : form || location.assign(url)
  }

  /** @param {Event} e */
  link(e) {
    const a = e.target instanceof Element && e.target.closest("a[href]")
    return a instanceof HTMLAnchorElement && a.origin == location.origin && /^(_self)?$/.test(a.target) && !a.hasAttribute("download") && !off(a) ? a : null
  }

  onClick = (/** @type {MouseEvent} */ e) => {
    const a = this.link(e)
    if (!a || e.defaultPrevented || e.button || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey || (a.hash && here(a.href))) return
    if (this.stale) return this.full(a.href, "browser")
    e.preventDefault()
    this.visit(a.href)
  }

  onSubmit = (/** @type {SubmitEvent} */ e) => {
    const f = e.target
    const s = e.submitter
    if (e.defaultPrevented || !(f instanceof HTMLFormElement) || off(f) || off(s)) return
    const at = (/** @type {string} */ n) => s?.getAttribute("form" + n) || f.getAttribute(n) || ""
    const method = at("method").toUpperCase()
    const url = new URL(abs(at("action") || location.href))
    if (url.origin != location.origin || method == "DIALOG" || !/^(_self)?$/.test(at("target"))) return
    if (this.stale) return this.full(url.href, "browser")
    e.preventDefault()
    const body = new FormData(f, s)
    const params = new URLSearchParams(/** @type {any} */ (body))
    if (method != "POST") url.search = "" + params
    this.visit(url.href, method == "POST" ? { method, body: /multipart/.test(at("enctype")) ? body : params, form: f, sub: s } : {})
  }

  onHover = (/** @type {MouseEvent} */ e) => {
    const a = this.link(e)
    const url = a?.href || ""
    if (!a || this.stale || this.cache.has(url) || here(url) || !(config.prefetch || a.closest("[data-deploysync-prefetch]"))) return
    if (this.cache.size > 7) this.cache.clear()
    this.cache.set(url, fetch(url, { headers: HEADERS }).catch(() => {}))
  }

  /** @param {string} url @param {any} [o] */
  async visit(url, o = {}) {
    const { form, sub, pop } = o
    if (!dispatch("before-navigate", { url, method: o.method || "GET" })) return
    if (this.stale) return this.full(url, form, sub)
    this.ctl?.abort()
    const ctl = (this.ctl = new AbortController())
    const hit = !form && this.cache.get(url)
    this.cache.clear()
    const bar = document.createElement("progress")
    bar.id = KEY + "-progress"
    bar.style.cssText = "position:fixed;inset:0 0 auto;width:100%;height:3px;border:0;z-index:99999"
    const t = setTimeout(() => document.documentElement.append(bar), 300)
    /** @type {any} */
    let res
    try {
      res = (await hit) || (await fetch(url, { ...o, headers: HEADERS, signal: ctl.signal }))
      url = res.url + new URL(url).hash // fetch drops it
      if (this.seen(res.status, (n) => res.headers.get(n))) res = 0 // the app was not called
      // a POST answered in place was processed: show it
      if (!res || (this.stale && (!form || res.redirected)) || !/html/.test(res.headers.get("Content-Type"))) throw 0
      const doc = new DOMParser().parseFromString(await res.text(), "text/html")
      if (ctl == this.ctl) await this.render(doc, url, pop)
    } catch {
      if (!ctl.signal.aborted) res ? this.full(url) : this.full(url, form, sub)
    }
    clearTimeout(t)
    bar.remove()
  }

  /** @param {Document} doc @param {string} url @param {string} [pop] */
  async render(doc, url, pop) {
    if (pop == null) {
      this.pos[this.key] = [scrollX, scrollY]
      this.key = "" + Date.now()
      history[here(url) ? "replaceState" : "pushState"]({ ds: this.key }, "", url)
    } else this.key = pop
    this.page = location.pathname + location.search
    // new stylesheets load before the swap: no flash
    const key = (/** @type {Element} */ el) => (el.localName == "script" ? el.getAttribute("src") || el.textContent : el.outerHTML)
    const old = new Map([...document.head.children].map((el) => [key(el), el]))
    const loads = []
    for (const el of [...doc.head.children]) {
      if (old.delete(key(el))) continue
      const n = el.localName == "script" ? script(el) : el
      if (n.matches("link[rel~=stylesheet]")) loads.push(new Promise((r) => ["load", "error"].map((t) => n.addEventListener(t, r))))
      document.head.append(n)
    }
    await Promise.all(loads)
    for (const el of old.values()) el.localName == "script" || el.remove()
    document.body.replaceWith(doc.body)
    for (const s of document.body.querySelectorAll("script")) s.replaceWith(script(s))
    const target = document.getElementById(decodeURIComponent(location.hash.slice(1)))
    const p = pop != null && this.pos[pop]
    p ? scrollTo(p[0], p[1]) : target ? target.scrollIntoView() : scrollTo(0, 0)
    // focus went to <body>; announce the page
    const af = document.querySelector("[autofocus]")
    if (af instanceof HTMLElement) af.focus()
    const live = document.createElement("p")
    live.setAttribute("role", "status")
    live.style.cssText = "position:fixed;clip-path:inset(50%)"
    document.body.append(live)
    setTimeout(() => (live.textContent = document.title), 99)
    dispatch("navigated", { url: location.href })
  }

  onSubmitSeen = (/** @type {SubmitEvent} */ e) => (this.sub = e.submitter)

  // another router's push (Navigation API)
  onNavigate = (e) => {
    const url = e.destination.url
    if (this.stale && e.cancelable && e.destination.sameDocument && e.navigationType != "traverse" && !here(url)) {
      e.preventDefault()
      this.full(url)
    }
  }

  onHtmxRequest = (e) => e.detail.boosted && Object.assign(e.detail.headers, HEADERS)

  onHtmxLoad = (e) => {
    const { xhr, boosted, elt } = e.detail
    if (boosted && (this.seen(xhr.status, (n) => xhr.getResponseHeader(n)) || (this.stale && !/post/i.test(elt.method)))) {
      e.preventDefault()
      this.full(xhr.responseURL, formOf(elt), this.sub)
    }
  }

  // not frames, prefetches
  onTurboRequest = (e) => (e.target == document.documentElement || formOf(e.target)) && Object.assign(e.detail.fetchOptions.headers, HEADERS)

  onTurboResponse = (e) => {
    const r = e.detail.fetchResponse.response
    const f = formOf(e.target)
    if ((e.target == document.documentElement || f) && (this.seen(r.status, (n) => r.headers.get(n)) || (this.stale && !f))) {
      e.preventDefault()
      this.full(r.url, f, this.sub)
    }
  }
}

if (!(KEY in window)) {
  const router = new Router()
  router.start()
  const h = /** @type {any} */ (history)
  // the same without the Navigation API
  if (!(/** @type {any} */ (window).navigation))
    for (const m of ["pushState", "replaceState"]) {
      const f = h[m]
      h[m] = (/** @type {any[]} */ ...a) => (router.on && router.external && router.stale && a[2] && !here(a[2]) ? router.full(abs(a[2])) : f.apply(h, a))
    }
  Object.assign(window, {
    [KEY]: {
      get stale() {
        return router.stale
      },
      check: () => router.check(),
      navigate: (/** @type {string} */ url) => (router.client ? router.visit(abs(url)) : router.full(abs(url))),
      router,
    },
  })
}
