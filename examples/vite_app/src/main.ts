// A tiny client-routed app: pushState navigation, one route loaded lazily.
import "./style.css";
import { heading, VERSION } from "./shared";

async function show(path: string): Promise<void> {
  const outlet = document.getElementById("outlet");
  if (!outlet) return;
  outlet.className = "";
  delete outlet.dataset.route;
  if (path === "/reports") {
    try {
      const route = await import("./lazy");
      route.default(outlet);
    } catch {
      // The chunk of an outdated deployment is gone (deploysync marks the page stale and
      // the next navigation is a full load onto the new version): no error page.
      outlet.replaceChildren(heading("This page was updated; follow any link to continue."));
      outlet.dataset.route = "unavailable";
    }
    return;
  }
  outlet.replaceChildren(heading(path === "/" ? `Home (${VERSION})` : `Page ${path}`));
  outlet.dataset.route = path;
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
