// A search index saved by the Python runtime, opened here with the same package: the same results
// and the same refusals. EDGEINFER_INDEX_CASES: a JSON file naming the package, an int8-first index,
// an exact (fp32) index, another package, and the Python runtime's hits for each query.
import assert from "node:assert/strict";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { test } from "node:test";
import { InputError, PackageError, openIndex } from "../dist/index.js";

const cases = JSON.parse(fs.readFileSync(process.env.EDGEINFER_INDEX_CASES, "utf8"));

test("the exact index finds what the Python runtime found", async () => {
  const index = await openIndex(cases.exact, cases.package);
  assert.equal(index.precision, "fp32");
  for (const expected of cases.exact_hits) {
    const hits = await index.search(expected.query, expected.ids.length);
    assert.deepEqual(hits.ids, expected.ids, expected.query);
    hits.scores.forEach((s, i) => assert.ok(Math.abs(s - expected.scores[i]) < 1e-4, `${expected.query}: score ${i}`));
    assert.equal(hits.rescued, false);
  }
});

test("the int8-first index keeps the gate's rule and mostly the Python runtime's very answers", async () => {
  const index = await openIndex(cases.cascade, cases.package);
  const exact = await openIndex(cases.exact, cases.package);
  assert.equal(index.precision, "int8");
  assert.deepEqual(index.gate, cases.gate);
  let same = 0;
  for (const expected of cases.cascade_hits) {
    const hits = await index.search(expected.query, expected.ids.length);
    if (hits.rescued) {
      assert.deepEqual(hits.ids, (await exact.search(expected.query, expected.ids.length)).ids, expected.query);
    } else {
      assert.ok(hits.scores[0] - hits.scores[1] >= index.gate.margin, expected.query);
    }
    if (hits.rescued === expected.rescued && hits.ids.join() === expected.ids.join()) same++;
  }
  // int8 rounds activations per tensor, so onnxruntime-node and Python's onnxruntime may differ on a
  // query sitting at the margin; anything beyond a few would be a different rule
  assert.ok(same >= cases.cascade_hits.length - 2, `${same} of ${cases.cascade_hits.length} alike`);
});

test("another package, a damaged file, a missing file and a bad k are refused in one line", async () => {
  await assert.rejects(openIndex(cases.exact, cases.other), (err) => err instanceof InputError && /built with another package/.test(err.message));
  await assert.rejects(openIndex(path.join(os.tmpdir(), "none.index"), cases.package), (err) => err instanceof InputError && /does not exist/.test(err.message));
  const damaged = path.join(fs.mkdtempSync(path.join(os.tmpdir(), "edgeinfer-index-")), "d.index");
  const bytes = fs.readFileSync(cases.exact);
  bytes[bytes.length - 1] ^= 1;
  fs.writeFileSync(damaged, bytes);
  await assert.rejects(openIndex(damaged, cases.package), (err) => err instanceof PackageError && /sha256/.test(err.message) && !err.message.includes("\n"));
  fs.writeFileSync(damaged, Buffer.from("PK\u0003\u0004 not an index"));
  await assert.rejects(openIndex(damaged, cases.package), (err) => err instanceof PackageError && /not an edgeinfer search index/.test(err.message));
  const index = await openIndex(cases.exact, cases.package);
  await assert.rejects(index.search("fine", 0), (err) => err instanceof InputError && /k 0 must be between 1 and/.test(err.message));
  await assert.rejects(index.search("  "), (err) => err instanceof InputError);
});
