// A tiny Vue app routed with pushState; the Reports route is its own lazily loaded chunk.
// Render functions (h) keep it to Vite alone: no single-file components, no plugin.
import { type Component, createApp, defineComponent, h, ref, shallowRef, watchEffect } from "vue";
import "./style.css";
import { VERSION } from "./shared";

const path = ref(location.pathname);
const route = ref("");
const view = shallowRef<Component | null>(null);

async function show(next: string): Promise<void> {
  path.value = next;
  if (next === "/reports") {
    try {
      view.value = (await import("./lazy")).default;
      route.value = "reports";
    } catch {
      // The chunk of an outdated deployment is gone: no error page. deploysync learns of
      // it (as docs/vite.md advises for a caught failure) and the next navigation is a
      // full load onto the new version.
      void (window as { deploysync?: { check(): Promise<boolean> } }).deploysync?.check();
      view.value = null;
      route.value = "unavailable";
    }
    return;
  }
  view.value = null;
  route.value = next;
}

function title(): string {
  if (route.value === "unavailable") return "This page was updated; follow any link to continue.";
  return path.value === "/" ? `Home (${VERSION})` : `Page ${path.value}`;
}

const App = defineComponent({
  setup: () => () => (view.value ? h(view.value) : h("h1", title())),
});

const outlet = document.getElementById("outlet");
if (outlet) {
  createApp(App).mount(outlet);
  // After the render, so a route's marker never shows before its content.
  watchEffect(
    () => {
      outlet.dataset.route = route.value;
      outlet.className = route.value === "reports" ? "lazy-route" : "";
    },
    { flush: "post" },
  );
}

document.addEventListener("click", (event) => {
  const link = (event.target as Element | null)?.closest?.("a[data-spa]");
  if (!(link instanceof HTMLAnchorElement) || event.button !== 0) return;
  if (event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  history.pushState(null, "", link.href);
  void show(location.pathname);
});
window.addEventListener("popstate", () => void show(location.pathname));
void show(location.pathname);

// A worker, loaded by the URL Vite gives its chunk: the page says when it answered.
const worker = new Worker(new URL("./worker.ts", import.meta.url), { type: "module" });
worker.onmessage = (event: MessageEvent<number>) => {
  document.documentElement.dataset.worker = String(event.data);
};
worker.postMessage(21);
