// The same conformance vectors in real headless Chromium with onnxruntime-web (WASM), and the demo
// page answering as you type. EDGEINFER_VECTORS as for conformance.test.mjs; CHROMIUM: the browser
// (default: Debian's /usr/bin/chromium). Nothing here downloads a browser.
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { after, before, test } from "node:test";
import puppeteer from "puppeteer-core";
import { serve } from "./serve.mjs";

const files = (process.env.EDGEINFER_VECTORS ?? "").split(path.delimiter).filter(Boolean);
const executablePath = process.env.CHROMIUM ?? ["/usr/bin/chromium", "/usr/bin/chromium-browser"].find((p) => fs.existsSync(p));
let browser, server;

before(async () => {
  assert.ok(executablePath, "Chromium is not installed: apt-get install chromium (or set CHROMIUM)");
  const mounts = {};
  files.forEach((file, i) => {
    const vectors = JSON.parse(fs.readFileSync(file, "utf8"));
    mounts[`/package${i}/`] = vectors.package;
    mounts[`/vectors${i}/`] = path.dirname(file);
  });
  server = await serve(mounts);
  browser = await puppeteer.launch({ executablePath, headless: true, args: ["--no-sandbox", "--disable-gpu"] });
});

after(async () => {
  await browser?.close();
  server?.close();
});

test("vectors are given", () => assert.ok(files.length > 0, "set EDGEINFER_VECTORS"));

files.forEach((file, i) => {
  test(`conformance in Chromium: ${path.basename(path.dirname(file))}`, async () => {
    const page = await browser.newPage();
    const base = `http://127.0.0.1:${server.address().port}`;
    await page.goto(`${base}/demo/conformance.html?vectors=/vectors${i}/vectors.json&package=/package${i}/`);
    await page.waitForFunction("window.edgeinferConformance !== undefined", { timeout: 600_000 });
    const outcome = await page.evaluate("window.edgeinferConformance");
    assert.deepEqual(outcome.errors, []);
    const ms = outcome.ms.slice().sort((a, b) => a - b);
    console.log(`# ${path.basename(path.dirname(file))} in Chromium (WASM, ${outcome.isolated ? "cross-origin isolated, 2 threads" : "1 thread"}), ` +
                `median ${ms[ms.length >> 1]?.toFixed(2)} ms per input`);
    for (const c of outcome.cases) {
      console.log(`#   ${c.name}: ${c.exact}/${c.inputs} exact, same label ${c.sameLabel}, same depth ${c.sameDepth}, max diff ${c.maxDiff.toExponential(1)}`);
    }
    // fp32 graphs compute the same in WASM as natively: every fp32 case matches exactly. An int8 variant
    // (7-bit weights, so no x86 kernel saturates) computes the same integers; its fp32 parts round in
    // another order, which moves a probability by up to ~2e-2: same labels and depths, values within 5e-2.
    for (const c of outcome.cases) {
      const why = `${c.name}: ${c.failures.slice(0, 3).join("; ")}`;
      if (c.precision === "fp32") assert.equal(c.exact, c.inputs, why);
      assert.equal(c.sameLabel, c.inputs, why);
      assert.equal(c.sameDepth, c.inputs, why);
      assert.ok(c.maxDiff <= 5e-2, why);
    }
    assert.ok(outcome.cases.some((c) => c.precision === "fp32") && outcome.cases.some((c) => c.precision !== "fp32"));
    await page.close();
  });
});

test("the demo page answers as you type, with the depth that answered", async () => {
  const page = await browser.newPage();
  const base = `http://127.0.0.1:${server.address().port}`;
  await page.goto(`${base}/demo/?package=/package0/&agreement=${JSON.parse(fs.readFileSync(files[0], "utf8")).cases.find((c) => c.policy.agreement)?.policy.agreement ?? 0.99}`);
  await page.waitForFunction("window.edgeinferReady === true || window.edgeinferError !== undefined", { timeout: 170_000 });
  assert.equal(await page.evaluate("window.edgeinferError"), undefined);
  await page.type("#text", "a good movie");
  await page.waitForFunction("document.querySelector('#answer').dataset.depth !== undefined", { timeout: 60_000 });
  const depth = await page.$eval("#answer", (e) => Number(e.dataset.depth));
  const text = await page.$eval("#answer", (e) => e.textContent);
  assert.ok(depth >= 1 && /answered after block/.test(text), text);
  await page.close();
});
