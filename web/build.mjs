// Builds the explorer page into vaedeploy/web/page/ (the Python package's data, so `vaedeploy web` needs no npm):
// src/ bundled by esbuild into app.js, the HTML and CSS copied, and onnxruntime-web's wasm pair copied into ort/,
// where the page's env.wasm.wasmPaths finds it. build.json lists every file, so the Python side can tell a complete
// build from a partial one.
import { build } from "esbuild";
import { copyFile, mkdir, readFile, writeFile } from "node:fs/promises";
import { dirname, join, relative } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = process.argv[2] ?? join(here, "..", "vaedeploy", "web", "page");
const ortDist = join(here, "node_modules", "onnxruntime-web", "dist");
// ort.min.mjs (the "extern wasm" build) loads ort-wasm-simd-threaded.jsep.{mjs,wasm}: wasm and WebGPU in one pair
const ortFiles = ["ort-wasm-simd-threaded.jsep.mjs", "ort-wasm-simd-threaded.jsep.wasm"];

await mkdir(join(out, "ort"), { recursive: true });
const bundled = await build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  legalComments: "linked",
  // the build of onnxruntime-web that fetches its .mjs/.wasm from wasmPaths instead of inlining the .mjs: its
  // worker threads then start from that .mjs, not from app.js
  conditions: ["onnxruntime-web-use-extern-wasm"],
  outfile: join(out, "app.js"),
  logLevel: "warning",
  metafile: true,
});
for (const name of ["index.html", "style.css"]) await copyFile(join(here, "src", name), join(out, name));
for (const name of ortFiles) await copyFile(join(ortDist, name), join(out, "ort", name));
const ortVersion = JSON.parse(await readFile(join(here, "node_modules", "onnxruntime-web", "package.json"))).version;
const files = [
  "index.html", "style.css", ...Object.keys(bundled.metafile.outputs).map((p) => relative(out, p)),
  ...ortFiles.map((n) => `ort/${n}`),
];
await writeFile(join(out, "build.json"), JSON.stringify({ "onnxruntime-web": ortVersion, files }, null, 2) + "\n");
console.log(`built the explorer page in ${out} (onnxruntime-web ${ortVersion})`);
