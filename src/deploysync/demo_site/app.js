// The demo site's own script. It uses nothing of deploysync but its DOM events, as any
// app could: it shows a hint when the page is outdated and keeps a log of what happened
// in this tab. Each build prepends `const DEMO_VERSION = n; const DEMO_THEME = "...";`.

const STORAGE_KEY = "deploysync-demo-events";
const MAX_EVENTS = 40;

/** @typedef {{at: number, kind: string, text: string}} DemoEvent */

/** @returns {DemoEvent[]} */
function readEvents() {
  try {
    const parsed = JSON.parse(sessionStorage.getItem(STORAGE_KEY) || "[]");
    return Array.isArray(parsed) ? parsed : [];
  } catch {
    return [];
  }
}

/** @param {string} kind @param {string} text */
function record(kind, text) {
  const events = [{ at: Date.now(), kind, text }, ...readEvents()].slice(0, MAX_EVENTS);
  try {
    sessionStorage.setItem(STORAGE_KEY, JSON.stringify(events));
  } catch {
    // Storage may be full or disabled: the panel then shows nothing, the page still works.
  }
  render();
}

function render() {
  const list = document.getElementById("events");
  if (!list) return;
  const events = readEvents();
  if (events.length === 0) {
    const empty = document.createElement("li");
    empty.className = "empty";
    empty.textContent = "Nothing yet.";
    list.replaceChildren(empty);
    return;
  }
  list.replaceChildren(
    ...events.map((event) => {
      const item = document.createElement("li");
      item.className = `kind-${event.kind}`;
      const time = document.createElement("time");
      time.textContent = new Date(event.at).toLocaleTimeString([], { hour12: false });
      const text = document.createElement("span");
      text.textContent = event.text;
      item.append(time, text);
      return item;
    }),
  );
}

/** @param {unknown} id */
function short(id) {
  return typeof id === "string" && id ? id.slice(0, 8) : "?";
}

function pageDeployment() {
  const meta = document.querySelector('meta[name="deployment-id"]');
  return meta ? meta.getAttribute("content") : null;
}

function showStaleBanner() {
  const banner = document.getElementById("stale-banner");
  if (banner) banner.hidden = false;
}

function updateNotesCount() {
  const notes = document.getElementById("notes");
  const count = document.getElementById("notes-count");
  if (notes instanceof HTMLTextAreaElement && count) count.textContent = String(notes.value.length);
}

/** @param {unknown} url */
function pathOf(url) {
  try {
    const parsed = new URL(String(url), location.href);
    return parsed.pathname + parsed.search;
  } catch {
    return location.pathname;
  }
}

/**
 * Wire the page up, once per document: a client-side swap may bring in the script of
 * another version (a form answered in place by the new deployment), which must not
 * listen a second time.
 */
function start() {
  document.addEventListener("deploysync:stale", onStale);
  document.addEventListener("deploysync:navigated", onNavigated);
  document.addEventListener("deploysync:before-reload", onBeforeReload);
  document.addEventListener("input", (event) => {
    if (event.target instanceof HTMLElement && event.target.id === "notes") updateNotesCount();
  });
  const navigation = /** @type {PerformanceNavigationTiming | undefined} */ (
    performance.getEntriesByType("navigation")[0]
  );
  const how = navigation && navigation.type === "reload" ? "reloaded" : "loaded";
  record("load", `Page ${how}: v${DEMO_VERSION} (${DEMO_THEME}), deployment ${short(pageDeployment())}.`);
  if (window.deploysync && window.deploysync.stale) showStaleBanner();
  updateNotesCount();
}

/** How the page learned about the new version, by `deploysync:stale` reason. */
const REASONS = {
  check: "found by a version check",
  "check-failed": "the version check failed after an asset error",
  asset: "an asset failed to load",
  tab: "another tab told this one",
  409: "the server refused a navigation from this version",
  response: "a response came from it",
};

/** @param {Event} event */
function onStale(event) {
  const detail = /** @type {CustomEvent} */ (event).detail || {};
  const how = REASONS[detail.reason] || detail.reason || "";
  const which = detail.serverId ? ` (deployment ${short(detail.serverId)})` : "";
  record(
    "stale",
    `A new version is live${which}${how ? ", " + how : ""}. This page stays on v${DEMO_VERSION} until your next click.`,
  );
  showStaleBanner();
}

function onNavigated() {
  record("nav", `Client-side navigation to ${location.pathname}: no page load.`);
  updateNotesCount();
  // deploysync swaps the body: restore what this script keeps in it.
  if (window.deploysync && window.deploysync.stale) showStaleBanner();
}

/** @param {Event} event */
function onBeforeReload(event) {
  const detail = /** @type {CustomEvent} */ (event).detail || {};
  record("reload", `Full page load of ${pathOf(detail.url || location.href)} to pick up the new version.`);
}

if (!document.documentElement.dataset.demoStarted) {
  document.documentElement.dataset.demoStarted = String(DEMO_VERSION);
  start();
}
