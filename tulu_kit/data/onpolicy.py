"""On-policy preference pairs, labelled by verifiers: Tulu 3's preference pipeline in miniature.

Tulu 3 (Lambert et al. 2024, "Tulu 3: Pushing Frontiers in Open Language Model Post-Training", arXiv 2411.15124,
§5.2.1) builds its DPO data from prompts answered both *on-policy* (completions sampled from the Tulu 3 SFT
model itself) and *off-policy* (other models), rated by a judge, the best taken as chosen and a worse one as
rejected. In miniature the judge is a verifier: replies are sampled from the SFT model, each scored by the same
verifiable rewards the RL stages use (:func:`tulu_kit.rewards.verifiable_reward`: the GSM8K scorer, the IFEval
checkers). A prompt with a correct and an incorrect sample gives the pair (chosen: a verified correct reply,
rejected: a failing one); a prompt with no correct sample pairs the reference reply (chosen) with a failing
sample; a prompt whose samples all pass gives no pair (nothing left to prefer), nor does one whose only failing
samples are empty replies (the model stopped at once: no preference pair has an empty side). The data stage mixes these pairs
with the off-policy ones (``on_policy_model`` in :class:`tulu_kit.data.stage.DataConfig`).
"""

from __future__ import annotations

import random
from collections import Counter

import torch


def sample_replies(model, tokenizer, prompts: list[list[dict]], n: int, temperature: float, max_new_tokens: int,
                   seed: int, batch_size: int = 32) -> list[list[str]]:  # fmt: skip
    """``n`` sampled replies per chat prompt (left-padded batches); torch's global generator is left as it was."""
    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True) for p in prompts]
    out: list[list[str]] = []
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[i : i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False
            )
            with torch.no_grad():
                gen = model.generate(
                    **enc, do_sample=True, temperature=temperature, top_k=0, top_p=1.0,
                    max_new_tokens=max_new_tokens, num_return_sequences=n, pad_token_id=tokenizer.pad_token_id,
                )  # fmt: skip
            replies = tokenizer.batch_decode(gen[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
            out += [[r.strip() for r in replies[j : j + n]] for j in range(0, len(replies), n)]
    finally:
        torch.random.set_rng_state(state)
    return out


def label_pairs(rows: list[dict], replies: list[list[str]], seed: int = 0) -> tuple[list[dict], dict]:
    """Preference pairs ``{"chosen", "rejected", "task"}`` from RLVR ``rows`` (with a ``reference`` reply) and
    their sampled ``replies``; returns (pairs, counts of how each prompt was used)."""
    from tulu_kit.rewards import verifiable_reward

    rng = random.Random(f"on-policy-{seed}")
    pairs, counts = [], Counter()
    for row, samples in zip(rows, replies):
        scored = [(r, verifiable_reward(row, r)) for r in samples]
        good = [r for r, s in scored if s >= 1.0]
        bad = [r for r, s in scored if s < 1.0 and r.strip()]  # an empty reply is no preference pair's side
        counts["samples"] += len(samples)
        counts["samples_correct"] += len(good)
        counts["samples_empty"] += sum(not r.strip() for r in samples)
        if not bad:
            counts["prompts_all_correct" if len(good) == len(samples) else "prompts_no_rejected"] += 1
            continue
        if good:
            chosen, counts["pairs_sampled_chosen"] = rng.choice(good), counts["pairs_sampled_chosen"] + 1
        else:
            chosen, counts["pairs_reference_chosen"] = row["reference"], counts["pairs_reference_chosen"] + 1
        prompt = row["messages"]
        pairs.append(
            {
                "chosen": prompt + [{"role": "assistant", "content": chosen}],
                "rejected": prompt + [{"role": "assistant", "content": rng.choice(bad)}],
                "task": row["dataset"],
            }
        )
    counts["prompts"] = len(rows)
    counts["pairs"] = len(pairs)
    return pairs, dict(counts)


def on_policy_preference(model_dir: str, rows: list[dict], n_samples: int = 4, temperature: float = 1.0,
                         max_new_tokens: int = 40, seed: int = 0) -> tuple[list[dict], dict]:  # fmt: skip
    """Sample ``n_samples`` replies per row from the model at ``model_dir`` and label them into pairs."""
    from tulu_kit.models import load_model, load_tokenizer

    tokenizer, model = load_tokenizer(model_dir), load_model(model_dir).eval()
    replies = sample_replies(model, tokenizer, [r["messages"] for r in rows], n_samples, temperature,
                             max_new_tokens, seed)  # fmt: skip
    return label_pairs(rows, replies, seed)
