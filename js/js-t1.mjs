import { load } from "/work/main/js/dist/index.js";
const s = await load("/work/pk/sst2-jl-dev.edge", { policy: { agreement: 0.99 } });
for (const t of ["a gorgeous , witty , seductive movie .", "the plot is dull and the actors are bored ."]) {
  const r = await s.run(t); console.log(r.label, r.confidence.toFixed(4), r.trace.exitAfterBlock, r.trace.segments.join(","), r.trace.totalMs.toFixed(2));
}
