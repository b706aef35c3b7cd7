// The lazy route: its own chunk, loaded by a dynamic import() when the route is shown.
import "./lazy.css";
import { heading, VERSION } from "./shared";

export default function render(outlet: HTMLElement): void {
  outlet.replaceChildren(heading(`Reports (${VERSION})`));
  outlet.className = "lazy-route";
  outlet.dataset.route = "reports";
}
