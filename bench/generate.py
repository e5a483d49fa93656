"""Generation speed: KV-cache decoding (train/generate.py) against a full forward per token.

The same model, prompt and settings decode the same tokens both ways (the benchmark
checks it); the cached path feeds one position per token, the reference re-runs the
whole sequence (nanoGPT's generate). Interleaved repetitions in one process, medians.

    .venv/bin/python bench/generate.py [--profile P] [--prompt 8] [--reps 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from moedesk.profiles import load_profile  # noqa: E402
from moedesk.train.generate import Sampler, next_token  # noqa: E402
from moedesk.train.loop import build_model  # noqa: E402
from moedesk.train.sampling import ByteTokenizer, SampleSettings  # noqa: E402


@torch.no_grad()
def full_forward_generate(model, prompt: list[int], settings: SampleSettings) -> list[int]:
    generator = torch.Generator().manual_seed(settings.seed)
    ids = list(prompt)
    for _ in range(settings.max_new_tokens):
        logits, _ = model(torch.tensor([ids]))
        ids.append(next_token(logits[0, -1], settings, generator))
    return ids[len(prompt):]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=str(REPO / "profiles" / "tiny_topk.toml"))
    parser.add_argument("--prompt", type=int, default=8, help="prompt tokens")
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    profile = load_profile(args.profile)
    torch.manual_seed(0)
    model = build_model(profile).eval()
    context = profile.model.max_seq_len
    settings = SampleSettings(max_new_tokens=context - args.prompt, temperature=0.8, seed=1)
    prompt = list(range(65, 65 + args.prompt))
    sampler = Sampler(model, ByteTokenizer(profile.model.vocab_size), torch.device("cpu"))

    def cached() -> list[int]:
        return [t.id for t in sampler.stream(prompt, settings) if not t.prompt]

    assert cached() == full_forward_generate(model, prompt, settings), "the two paths differ"
    times: dict[str, list[float]] = {"KV cache": [], "full forward": []}
    for rep in range(args.reps):
        order = (("KV cache", cached), ("full forward",
                                         lambda: full_forward_generate(model, prompt, settings)))
        for name, run in order if rep % 2 else order[::-1]:
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    n = settings.max_new_tokens
    print(f"profile {Path(args.profile).name}: {n} new tokens after a {args.prompt}-token prompt "
          f"(context {context}), {args.threads} thread(s), {args.reps} interleaved reps")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<14}{median * 1e3:>10.1f} ms{n / median:>10.0f} tokens/s")
    ratio = statistics.median(times["full forward"]) / statistics.median(times["KV cache"])
    print(f"=> KV cache is {ratio:.2f}x faster, same tokens")


if __name__ == "__main__":
    main()
