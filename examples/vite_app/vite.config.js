// The server (server.py) renders the HTML and asks deploysync for the entry's tags, as
// Vite's backend-integration guide describes; Vite only builds the assets.
import { defineConfig } from "vite";

export default defineConfig({
  // Must match the static URL prefix deploysync serves the deployment under.
  base: "/static/",
  // Vue's compile-time flags, set as its docs ask when no Vue plugin defines them.
  define: {
    __VUE_OPTIONS_API__: "false",
    __VUE_PROD_DEVTOOLS__: "false",
    __VUE_PROD_HYDRATION_MISMATCH_DETAILS__: "false",
  },
  build: {
    manifest: true, // .vite/manifest.json: what `deploysync build --vite` reads
    sourcemap: true, // .map files next to the chunks, which name them
    outDir: "dist",
    emptyOutDir: true,
    rollupOptions: {
      input: ["src/main.ts", "src/admin.ts"],
    },
  },
});
