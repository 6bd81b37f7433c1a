"""Decoder memory: does the KV-cache cap hold in a real process?

    python -m edgeinfer.bench.studies.decoder_memory [--package ~/.cache/edgeinfer/bench/smollm2.edge]

Each case is one fresh `edgeinfer generate` process (greedy, 64 new tokens, end of sequence allowed)
whose peak resident memory the parent reads from wait4(); the trace gives the cache at its largest.
Cases: a short prompt; a ~1,000-token prompt without a cap; the same under a cap of about half the
cache it needs, once refused and once pruned to fit (`--prune-to-fit`).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from ...runtime.user_cache import cache_root
from ..report_files import write_atomically, write_json


# the child reports its own peak: the parent's rusage of children is a maximum over all of them
CHILD = ("import resource, sys\nfrom edgeinfer.cli import main\ncode = main(sys.argv[1:])\n"
         "sys.stderr.write('\\nPEAK_RSS_KB %d\\n' % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
         "sys.exit(code)\n")


def run_case(package: Path, prompt: str, extra: list[str]) -> dict:
    command = [sys.executable, "-c", CHILD, "generate", str(package), "--prompt", prompt,
               "--max-new-tokens", "64", "--json", *extra]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stderr.strip().splitlines()
    peak = next(int(line.split()[1]) for line in lines if line.startswith("PEAK_RSS_KB"))
    record = {"exit_code": done.returncode, "peak_rss_mb": peak / 1024}
    if done.returncode == 0:
        trace = json.loads(done.stdout)["trace"]
        record.update(kv_mb=trace["kv_bytes"] / 2**20, prompt_tokens=trace["prompt_tokens"],
                      new_tokens=trace["new_tokens"])
    else:
        record["message"] = next((line for line in lines if line.startswith("edgeinfer: error")), "")
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default=str(cache_root() / "bench" / "smollm2.edge"))
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[2] / "shared"))
    parser.add_argument("--out", default="reports/decoder")
    args = parser.parse_args(argv)
    rows = (Path(args.shared) / "data" / "agnews" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    texts = [row.split("\t")[0] for row in rows[500:]]
    long_prompt = "Summarize these news items:\n" + "\n".join(texts[:28])
    short_prompt = "Summarize: " + texts[0]
    package = Path(args.package)
    uncapped = run_case(package, long_prompt, [])
    cap = round(uncapped["kv_mb"] / 2, 1)
    cases = {"short prompt": run_case(package, short_prompt, []), "long prompt, no cap": uncapped,
             f"long prompt, cap {cap} MB": run_case(package, long_prompt, ["--memory-mb", str(cap)]),
             f"long prompt, cap {cap} MB, --prune-to-fit": run_case(package, long_prompt,
                                                                     ["--memory-mb", str(cap), "--prune-to-fit"])}
    document = {"package": str(package), "cap_mb": cap, "cases": cases}
    lines = ["| case | exit | prompt tokens | KV cache MB | peak RSS MB |", "|---|---:|---:|---:|---:|"]
    for name, case in cases.items():
        kv = f"{case['kv_mb']:.1f}" if "kv_mb" in case else "-"
        tokens = case.get("prompt_tokens", "-")
        lines.append(f"| {name} | {case['exit_code']} | {tokens} | {kv} | {case['peak_rss_mb']:.0f} |")
    refusal = next((c["message"] for c in cases.values() if c["exit_code"] != 0), None)
    text = "\n".join(lines) + (f"\n\nRefusal: `{refusal}`\n" if refusal else "\n")
    write_json(Path(args.out) / "decoder_memory.json", document)
    write_atomically(Path(args.out) / "decoder_memory.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
