// Bundles the console into dist/ with fixed names (gateway/envoy.py serves exactly these).
import { build } from "esbuild";
import { copyFileSync, mkdirSync } from "node:fs";

mkdirSync("dist", { recursive: true });
await build({
  entryPoints: ["src/main.ts"],
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  sourcemap: false,
  outfile: "dist/app.js",
  logLevel: "warning",
});
copyFileSync("index.html", "dist/index.html");
copyFileSync("app.css", "dist/app.css");
copyFileSync("favicon.svg", "dist/favicon.svg");
console.log("console built into dist/ (index.html, app.js, app.css, favicon.svg)");
