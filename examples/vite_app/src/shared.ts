import "./shared.css";

export const VERSION: string = import.meta.env.VITE_APP_VERSION ?? "dev";

export function heading(text: string): HTMLElement {
  const h = document.createElement("h1");
  h.textContent = text;
  return h;
}
