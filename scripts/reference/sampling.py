"""Reference distributions of Hugging Face generate()'s logits processors, for src/llm/sampling.ts.

For a few random logit rows and option sets, applies transformers' own RepetitionPenaltyLogitsProcessor,
TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper and MinPLogitsWarper in generate()'s order and
records the surviving token ids (most likely first) and their softmax probabilities.
Writes test/fixtures/sampling/processors.json. Deterministic; ~3 s.
"""
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402
from transformers.generation.logits_process import (  # noqa: E402
    LogitsProcessorList, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
    TopKLogitsWarper, TopPLogitsWarper)

torch.set_num_threads(1)
rng = np.random.default_rng(0)
V = 40
cases = []
option_sets = [
    {"temperature": 1.0},
    {"temperature": 0.7, "topK": 5},
    {"temperature": 1.3, "topP": 0.8},
    {"temperature": 1.0, "minP": 0.1},
    {"temperature": 0.9, "topK": 12, "topP": 0.9, "minP": 0.05, "repetitionPenalty": 1.3},
    {"temperature": 1.0, "topK": 3},
]
for k, opts in enumerate(option_sets):
    logits = (rng.standard_normal(V) * 2.5).astype(np.float32)
    if k == 5:
        logits[[4, 9, 17]] = logits.max() + 1  # a three-way tie at the top-k boundary
        logits[2] = logits.max() + 2
    seen = [int(x) for x in rng.integers(0, V, 6)]
    procs = LogitsProcessorList()
    if opts.get("repetitionPenalty", 1.0) != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(opts["repetitionPenalty"]))
    procs.append(TemperatureLogitsWarper(opts["temperature"]))
    if opts.get("topK"):
        procs.append(TopKLogitsWarper(opts["topK"]))
    if opts.get("topP", 1.0) < 1.0:
        procs.append(TopPLogitsWarper(opts["topP"]))
    if opts.get("minP"):
        procs.append(MinPLogitsWarper(opts["minP"]))
    scores = procs(torch.tensor([seen]), torch.tensor(logits, dtype=torch.float32)[None].clone())[0].double()
    probs = torch.softmax(scores, -1)
    alive = [int(i) for i in torch.argsort(-scores, stable=True) if torch.isfinite(scores[i])]
    cases.append({"logits": [float(x) for x in logits], "seen": seen, "options": opts,
                  "ids": alive, "probs": [float(probs[i]) for i in alive]})
out = {"cases": cases, "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
path = os.path.join(os.path.dirname(__file__), "../../test/fixtures/sampling/processors.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
    f.write("\n")
print("wrote", os.path.normpath(path), [len(c["ids"]) for c in cases])
