// Classify (or search, for an embedding package) as you type, showing which depth answered and how
// long it took. The package comes from ?package=URL (default /package/), served beside this page.
import * as ort from "onnxruntime-web";
import { load } from "/dist/index.js";

ort.env.wasm.wasmPaths = "/node_modules/onnxruntime-web/dist/";
ort.env.wasm.numThreads = globalThis.crossOriginIsolated ? 2 : 1;

const params = new URLSearchParams(location.search);
const packageUrl = new URL(params.get("package") ?? "/package/", location.href).href;
const agreement = params.has("agreement") ? Number(params.get("agreement")) : 0.99;
const status = document.getElementById("status");
const input = document.getElementById("text");
const answer = document.getElementById("answer");
const CORPUS = ["The team won the championship after a late goal.", "Stocks fell as oil prices rose.",
  "A new phone with a faster chip was announced.", "Heavy rain flooded the river valley.",
  "The film is a witty, warm comedy.", "The plot was dull and far too long."];

let session, corpus = null;
try {
  session = await load(packageUrl, { ort, policy: { agreement } });
  if (session.manifest.task === "feature-extraction") {
    corpus = await Promise.all(CORPUS.map(async (text) => ({ text, embedding: (await session.run(text)).embedding })));
  }
} catch (err) {
  status.textContent = `cannot load ${packageUrl}: ${err.message ?? err}`;
  window.edgeinferError = String(err.message ?? err);
  throw err;
}
status.textContent = `${session.manifest.task}, ${session.manifest.numBlocks} blocks, exits at agreement ${agreement}` +
  ` · WASM ${ort.env.wasm.numThreads} thread(s)${globalThis.crossOriginIsolated ? ", cross-origin isolated" : ""}`;
input.disabled = false;
let pending = Promise.resolve();

input.addEventListener("input", () => {
  const text = input.value;
  pending = pending.then(async () => {
    if (!text.trim()) { answer.textContent = ""; return; }
    const result = await session.run(text);
    const meta = `answered after block ${result.trace.exitAfterBlock} of ${session.manifest.numBlocks} · ${result.trace.totalMs.toFixed(1)} ms`;
    if (result.label !== null) {
      answer.innerHTML = `<strong class="label">${result.label}</strong> (${(result.confidence * 100).toFixed(1)}%)<div class="meta">${meta}</div>`;
    } else {
      const ranked = corpus.map((c) => ({ ...c, score: dot(c.embedding, result.embedding) })).sort((a, b) => b.score - a.score);
      answer.innerHTML = `<ol class="label">${ranked.slice(0, 3).map((r) => `<li>${r.text} (${r.score.toFixed(3)})</li>`).join("")}</ol><div class="meta">${meta}</div>`;
    }
    answer.dataset.depth = String(result.trace.exitAfterBlock);
  }).catch((err) => { answer.textContent = String(err.message ?? err); });
});

function dot(a, b) {
  let s = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) { s += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
  return s / Math.sqrt(na * nb);
}
window.edgeinferReady = true;
