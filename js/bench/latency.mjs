// Per-request latency of this runtime on a package: node bench/latency.mjs PKG POLICY_JSON TEXTS_FILE REPEATS
// prints {"ms": [...], "depths": [...]} (after 10 untimed warm-up requests). Used by bench/js_speed.py.
import fs from "node:fs";
import { load } from "../dist/index.js";

const [packageDir, policyJson, textsFile, repeats = "1"] = process.argv.slice(2);
const policy = JSON.parse(policyJson);
const texts = fs.readFileSync(textsFile, "utf8").split("\n").filter((t) => t.trim());
const session = await load(packageDir, { policy, threads: 2 });
for (const text of texts.slice(0, 10)) await session.run(text);
const ms = [], depths = [];
for (let r = 0; r < Number(repeats); r++) {
  for (const text of texts) {
    const t0 = performance.now();
    const result = await session.run(text);
    ms.push(performance.now() - t0);
    depths.push(result.trace.exitAfterBlock);
  }
}
process.stdout.write(JSON.stringify({ ms, depths }) + "\n");
