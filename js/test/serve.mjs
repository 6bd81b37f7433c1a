// A static server for the browser test and the demo: js/ at /, a package folder at /package/,
// extra files by name. Cross-origin isolated (COOP/COEP), so onnxruntime-web may use threads.
//   node test/serve.mjs PACKAGE_DIR [PORT]   then open http://localhost:PORT/demo/
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".json": "application/json",
                ".wasm": "application/wasm", ".onnx": "application/octet-stream", ".bin": "application/octet-stream" };

export function serve(mounts, port = 0) {
  const server = http.createServer((request, response) => {
    const url = new URL(request.url, "http://localhost");
    let file = null;
    for (const [prefix, folder] of Object.entries({ ...mounts, "/": ROOT })) {
      if (url.pathname.startsWith(prefix)) {
        const candidate = path.resolve(folder, "." + decodeURIComponent(url.pathname.slice(prefix.length - 1)));
        if (candidate.startsWith(path.resolve(folder))) file = candidate;
        break;
      }
    }
    if (file && fs.existsSync(file) && fs.statSync(file).isDirectory()) file = path.join(file, "index.html");
    if (!file || !fs.existsSync(file)) { response.writeHead(404); response.end("not found"); return; }
    response.writeHead(200, { "Content-Type": TYPES[path.extname(file)] ?? "application/octet-stream",
                              "Cross-Origin-Opener-Policy": "same-origin", "Cross-Origin-Embedder-Policy": "require-corp" });
    fs.createReadStream(file).pipe(response);
  });
  return new Promise((resolve) => server.listen(port, "127.0.0.1", () => resolve(server)));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const server = await serve({ "/package/": process.argv[2] }, Number(process.argv[3] ?? 8080));
  console.log(`http://127.0.0.1:${server.address().port}/demo/`);
}
