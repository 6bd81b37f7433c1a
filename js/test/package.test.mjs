// What the package checks refuse, as the Python runtime refuses it: a damaged file, a path out of the
// package, a graph naming an unlisted external file, a signature by another key, a wrong argument.
// EDGEINFER_PACKAGE: an unsigned classifier package; EDGEINFER_SIGNED / EDGEINFER_KEY / EDGEINFER_OTHER_KEY:
// a signed copy, its public key and another key (PEM files).
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { externalLocations } from "../dist/verify.js";
import { InputError, PackageError, load } from "../dist/index.js";

const packageDir = process.env.EDGEINFER_PACKAGE;

function copy() {
  assert.ok(packageDir, "set EDGEINFER_PACKAGE to an edge package folder");
  const target = fs.mkdtempSync(path.join(os.tmpdir(), "edgeinfer-js-"));
  fs.cpSync(packageDir, target, { recursive: true });
  return target;
}

function editManifest(dir, edit) {
  const file = path.join(dir, "manifest.json");
  const manifest = JSON.parse(fs.readFileSync(file, "utf8"));
  edit(manifest);
  fs.writeFileSync(file, JSON.stringify(manifest));
}

test("a package runs, and its answer comes with a trace", async () => {
  const session = await load(packageDir, { policy: { agreement: null } });
  const result = await session.run("a fine movie");
  assert.ok(result.label && result.probabilities.length > 1 && result.trace.exitAfterBlock > 0);
});

test("a damaged graph is refused before it is opened", async () => {
  const dir = copy();
  const graph = path.join(dir, "graphs", "full.onnx");  // what a run with exits off opens
  const bytes = fs.readFileSync(graph);
  bytes[bytes.length - 1] ^= 0xff;
  fs.writeFileSync(graph, bytes);
  const session = await load(dir, { policy: { agreement: null } });
  await assert.rejects(session.run("a fine movie"), (err) => err instanceof PackageError && /sha256/.test(err.message));
});

test("a path out of the package is refused", async () => {
  const dir = copy();
  editManifest(dir, (m) => { m.tokenizer.path = "../outside.json"; });
  await assert.rejects(load(dir), (err) => err instanceof PackageError && /not a plain path inside the package/.test(err.message));
});

test("a manifest field of the wrong type is one line naming it", async () => {
  const dir = copy();
  editManifest(dir, (m) => { m.model.num_blocks = "six"; });
  await assert.rejects(load(dir), (err) => err instanceof PackageError && /model.num_blocks/.test(err.message));
});

test("an unstored agreement level is refused, as in Python", async () => {
  await assert.rejects(load(packageDir, { policy: { agreement: 0.97 } }),
    (err) => err instanceof InputError && /agreement 0.97 is not a level/.test(err.message));
});

test("bad text is one line", async () => {
  const session = await load(packageDir, { policy: { agreement: null } });
  await assert.rejects(session.run("bad \udcff text"), InputError);
  await assert.rejects(session.run("   "), InputError);
  await assert.rejects(session.run(42), InputError);
});

test("the external-data walker finds every location a graph names", () => {
  const graph = fs.readFileSync(path.join(packageDir, "graphs", "block_00.onnx"));
  assert.deepEqual([...externalLocations(new Uint8Array(graph))], ["weights.bin"]);
});

test("a signature is checked when a key is given", async (t) => {
  const signed = process.env.EDGEINFER_SIGNED;
  assert.ok(signed, "set EDGEINFER_SIGNED, EDGEINFER_KEY and EDGEINFER_OTHER_KEY");
  const key = fs.readFileSync(process.env.EDGEINFER_KEY, "utf8");
  const other = fs.readFileSync(process.env.EDGEINFER_OTHER_KEY, "utf8");
  await load(signed, { verifyKey: key });
  await assert.rejects(load(signed, { verifyKey: other }), (err) => err instanceof PackageError && /signature does not match/.test(err.message));
  await assert.rejects(load(packageDir, { verifyKey: key }), (err) => err instanceof PackageError && /not signed/.test(err.message));
  const tampered = copy();
  fs.copyFileSync(path.join(signed, "manifest.sig"), path.join(tampered, "manifest.sig"));
  editManifest(tampered, (m) => { m.model.labels = m.model.labels.slice().reverse(); });
  await assert.rejects(load(tampered, { verifyKey: key }), PackageError);
  const huge = copy();  // a signature file is 64 bytes: a larger one is refused from its size, unread
  fs.writeFileSync(path.join(huge, "manifest.sig"), Buffer.alloc(1 << 20));
  await assert.rejects(load(huge, { verifyKey: key }), (err) => err instanceof PackageError && /larger than 64 bytes/.test(err.message));
});

test("a deadline shorter than one block answers from the first exit, cut short", async () => {
  const session = await load(packageDir, { policy: { agreement: 0.95 }, budget: { latencyMs: 0.001 } });
  const result = await session.run("a long sentence about a good movie with a kind and happy actor");
  assert.equal(result.trace.exitAfterBlock, 1);
  assert.ok(result.trace.deadlineCut || result.trace.segments.length === 1);  // cut short, or the first exit answered
  await assert.rejects(load(packageDir, { budget: { latencyMs: -1 } }), InputError);
});
