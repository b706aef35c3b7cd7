// The lazy route: its own chunk (and stylesheet), loaded by import() when it is shown.
import { defineComponent, h } from "vue";
import "./lazy.css";
import { VERSION } from "./shared";

export default defineComponent({
  name: "ReportsRoute",
  setup: () => () => h("h1", `Reports (${VERSION})`),
});
