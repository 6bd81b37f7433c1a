// The same vectors the Python runtime wrote (`edgeinfer conformance PKG -o DIR`), reproduced here:
// identical labels, exit depths, tokens per block, precision and restarts; probabilities within
// 1e-4 and embeddings within 1e-4. EDGEINFER_VECTORS lists the vectors.json files (path-separated).
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";
import { load } from "../dist/index.js";

const files = (process.env.EDGEINFER_VECTORS ?? "").split(path.delimiter).filter(Boolean);

test("conformance vectors are given", () => {
  assert.ok(files.length > 0, "set EDGEINFER_VECTORS to vectors.json files written by `edgeinfer conformance`");
});

for (const file of files) {
  const vectors = JSON.parse(fs.readFileSync(file, "utf8"));
  for (const c of vectors.cases) {
    test(`${path.basename(vectors.package)}: ${c.name}`, async () => {
      const session = await load(vectors.package, { policy: {
        agreement: c.policy.agreement, precision: c.policy.precision, keepSchedule: c.policy.keep_schedule } });
      for (const [i, text] of vectors.inputs.entries()) {
        const got = await session.run(text);
        const want = c.expected[i];
        const where = `${c.name}, input ${i} (${JSON.stringify(text.slice(0, 40))})`;
        assert.equal(got.trace.exitAfterBlock, want.exit_after_block, `${where}: exit depth`);
        assert.deepEqual(got.trace.tokensPerBlock, want.tokens_per_block, `${where}: tokens per block`);
        assert.equal(got.trace.precision, want.precision, `${where}: precision`);
        assert.equal(got.trace.restarts, want.restarts, `${where}: restarts`);
        if (want.label !== undefined) {
          assert.equal(got.label, want.label, `${where}: label`);
          want.probabilities.forEach((p, k) => assert.ok(Math.abs(got.probabilities[k] - p) <= 1e-4, `${where}: probability ${k}`));
        } else {
          want.embedding.forEach((x, k) => assert.ok(Math.abs(got.embedding[k] - x) <= 1e-4, `${where}: embedding ${k}`));
        }
      }
    });
  }
}
