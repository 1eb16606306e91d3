"""The peer of bench/ddp.ts: PyTorch DistributedDataParallel (gloo, CPU) fine-tuning the same
BertForSequenceClassification on the same Banking77 texts, global batch B split over N processes
of 1 thread each (per-rank batch B / N, as DistributedSampler), dynamic padding to each batch's
longest text, AdamW, clip_grad_norm_(1.0), dropout on. Prints one JSON line: the median seconds of
the steps after the warm-up ones, measured on rank 0 after a barrier.

  python3 bench/ddp_torch.py --model DIR --train CSV --nproc 2 --batch 32 --steps 20 --max-length 64
"""
import argparse
import csv
import json
import os
import statistics
import time

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def rank_main(rank, a, texts, labels, num_labels, out):
    torch.set_num_threads(1)
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(a.port)
    dist.init_process_group("gloo", rank=rank, world_size=a.nproc)
    from transformers import AutoTokenizer, BertForSequenceClassification

    tok = AutoTokenizer.from_pretrained(a.model)
    torch.manual_seed(42)
    model = BertForSequenceClassification.from_pretrained(a.model, num_labels=num_labels)
    model.train()
    ddp = torch.nn.parallel.DistributedDataParallel(model) if a.nproc > 1 else model
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)
    g = torch.Generator().manual_seed(42)
    order = torch.randperm(len(texts), generator=g).tolist()
    per = a.batch // a.nproc
    times = []
    for step in range(a.steps):
        idx = order[step * a.batch : (step + 1) * a.batch][rank * per : (rank + 1) * per]
        enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=a.max_length, return_tensors="pt")
        y = torch.tensor([labels[i] for i in idx])
        dist.barrier()
        t0 = time.perf_counter()
        loss = ddp(**enc, labels=y).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        out.put(statistics.median(times[a.warmup :]))
    dist.destroy_process_group()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--train", required=True)
    p.add_argument("--nproc", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--port", type=int, default=29571)
    a = p.parse_args()
    with open(a.train, newline="") as f:
        rows = list(csv.DictReader(f))
    names = sorted({r["category"] for r in rows})
    texts = [r["text"] for r in rows]
    labels = [names.index(r["category"]) for r in rows]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    mp.spawn(rank_main, args=(a, texts, labels, len(names), out), nprocs=a.nproc, join=True)
    step_s = out.get()
    print(json.dumps({"nproc": a.nproc, "step_seconds": step_s, "samples_per_second": a.batch / step_s}))


if __name__ == "__main__":
    main()
