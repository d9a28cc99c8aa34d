"""Reference code from allenai/open-instruct at commit 042fa2f9ad25f5fa09ace8eab7d4e8583d28fbe1 (the Tulu 2-era
eval scripts), for tests/test_agreement.py and tests/test_eval_replication.py. Apache-2.0.

Each block between `# --- verbatim` and `# --- end` is copied character for character from the file named (only
its indentation changed where it moved from `main(args)` into a function, and `args.x` became a parameter);
the surrounding function signatures are ours. The `exact_match` open-instruct loads with
`evaluate.load("exact_match")` needs the Hub; lm-eval 0.4.13 ships the same metric code as
`lm_eval.api.metrics.exact_match_hf_evaluate`, used here.
"""

# ruff: noqa
from __future__ import annotations

import glob
import json
import os
import random
import re

import pandas as pd
from lm_eval.api.metrics import exact_match_hf_evaluate


def _exact_match(predictions, references):
    # eval/gsm/run_eval.py and eval/bbh/run_eval.py: exact_match.compute(..., ignore_case=True, ignore_punctuation=True)
    return exact_match_hf_evaluate(predictions, references, ignore_case=True, ignore_punctuation=True)[
        "exact_match"
    ]


# ---------------------------------------------------------------------------------------------- GSM8K
def gsm_prediction(output: str) -> str:
    predictions = []
    # --- verbatim eval/gsm/run_eval.py (the loop over outputs)
    # replace numbers like `x,xxx` with `xxxx`
    output = re.sub(r"(\d),(\d)", r"\1\2", output)
    numbers = re.findall(r"[-+]?\d*\.\d+|\d+", output)
    if numbers:
        predictions.append(numbers[-1])
    else:
        predictions.append(output)
    # --- end
    return predictions[0]


def gsm_target(answer_field: str) -> str:
    example = {"answer": answer_field.split("####")[1].strip()}
    # --- verbatim eval/gsm/run_eval.py
    example["answer"] = re.sub(r"(\d),(\d)", r"\1\2", example["answer"])
    # --- end
    return example["answer"]


def gsm_correct(output: str, answer_field: str) -> bool:
    return _exact_match([gsm_prediction(output)], [gsm_target(answer_field)]) == 1.0


def gsm_sample(data_dir: str, max_num_examples: int = 200) -> list[dict]:
    # --- verbatim eval/gsm/run_eval.py main()
    random.seed(42)

    print("Loading data...")
    test_data = []
    with open(os.path.join(data_dir, f"test.jsonl")) as fin:
        for line in fin:
            example = json.loads(line)
            test_data.append(
                {"question": example["question"], "answer": example["answer"].split("####")[1].strip()}
            )
    # --- end
    # --- verbatim eval/gsm/run_eval.py main()
    if max_num_examples and len(test_data) > max_num_examples:
        test_data = random.sample(test_data, max_num_examples)
    # --- end
    return test_data


def math_sample(test_data: list[dict], max_num_examples: int = 200) -> list[dict]:
    """eval/MATH/run_eval.py main(): `random.seed(42)` then the same draw (over the file's problems in order)."""
    random.seed(42)
    # --- verbatim eval/MATH/run_eval.py main()
    if max_num_examples and len(test_data) > max_num_examples:
        test_data = random.sample(test_data, max_num_examples)
    # --- end
    return test_data


# ---------------------------------------------------------------------------------------------- BBH
def bbh_prediction(output: str) -> str:
    example = {}
    # --- verbatim eval/bbh/run_eval.py (the loop over outputs)
    # extract the first answer after `the answer is` and before the next period.
    # if there is no such answer, we will just use the raw output.
    filtered_output = re.search(r"<\|reserved_special_token_249\|>\n(.*)", output, re.DOTALL)
    if filtered_output:
        output = filtered_output.group(1).strip()
    extracted_answer = re.search(r"[t|T]he answer is (.*?)\.", output)
    if extracted_answer:
        example["prediction"] = extracted_answer.group(1).strip()
    else:
        example["prediction"] = output.strip()
    # --- end
    return example["prediction"]


def bbh_correct(output: str, target: str) -> bool:
    return _exact_match([bbh_prediction(output)], [target]) == 1.0


def bbh_sample(
    data_dir: str, max_num_examples_per_task: int = 40, sort_listing: bool = True
) -> dict[str, list]:
    """open-instruct walks `glob` order (the file system's); `sort_listing` gives it a sorted listing."""
    real_glob = glob.glob
    listing = (lambda p: sorted(real_glob(p))) if sort_listing else real_glob
    # --- verbatim eval/bbh/run_eval.py main() (glob.glob -> listing)
    random.seed(42)

    all_tasks = {}
    task_files = listing(os.path.join(data_dir, "bbh", "*.json"))
    for task_file in task_files:
        with open(task_file, "r") as f:
            task_name = os.path.basename(task_file).split(".")[0]
            all_tasks[task_name] = json.load(f)["examples"]
            if max_num_examples_per_task:
                all_tasks[task_name] = random.sample(all_tasks[task_name], max_num_examples_per_task)
    # --- end
    return all_tasks


# ---------------------------------------------------------------------------------------------- TyDi QA
def tydiqa_sample(dev_data: dict, max_num_examples_per_lang: int = 100) -> list[dict]:
    """`dev_data`: the GoldP dev JSON (all languages, as tydiqa-goldp-v1.1-dev.json)."""
    # --- verbatim eval/tydiqa/run_eval.py main()
    random.seed(42)

    print("Loading data...")

    test_data = []
    for article in dev_data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                example = {
                    "id": qa["id"],
                    "lang": qa["id"].split("-")[0],
                    "context": paragraph["context"],
                    "question": qa["question"],
                    "answers": qa["answers"],
                }
                test_data.append(example)
    data_languages = sorted(list(set([example["lang"] for example in test_data])))
    if max_num_examples_per_lang:
        sampled_examples = []
        for lang in data_languages:
            examples_for_lang = [example for example in test_data if example["lang"] == lang]
            if len(examples_for_lang) > max_num_examples_per_lang:
                examples_for_lang = random.sample(examples_for_lang, max_num_examples_per_lang)
            sampled_examples += examples_for_lang
        test_data = sampled_examples
    # --- end
    return test_data


# ---------------------------------------------------------------------------------------------- MMLU
choices = ["A", "B", "C", "D"]


# --- verbatim eval/mmlu/run_eval.py
def format_subject(subject):
    l = subject.split("_")
    s = ""
    for entry in l:
        s += " " + entry
    return s


def format_example(df, idx, include_answer=True):
    prompt = df.iloc[idx, 0]
    k = df.shape[1] - 2
    for j in range(k):
        prompt += "\n{}. {}".format(choices[j], df.iloc[idx, j + 1])
    prompt += "\nAnswer:"
    if include_answer:
        prompt += " {}\n\n".format(df.iloc[idx, k + 1])
    return prompt


def gen_prompt(train_df, subject, k=-1):
    prompt = "The following are multiple choice questions (with answers) about {}.\n\n".format(
        format_subject(subject)
    )
    if k == -1:
        k = train_df.shape[0]
    for i in range(k):
        prompt += format_example(train_df, i)
    return prompt


# --- end


def mmlu_prompts(data_dir: str, subject: str, ntrain: int = 0, n_instances: int | None = None) -> list[str]:
    # --- verbatim eval/mmlu/run_eval.py main() and eval_hf_model()
    dev_df = pd.read_csv(os.path.join(data_dir, "dev", subject + "_dev.csv"), header=None)[:ntrain]
    test_df = pd.read_csv(os.path.join(data_dir, "test", subject + "_test.csv"), header=None)
    if n_instances and n_instances < test_df.shape[0]:
        test_df = test_df.sample(n_instances, random_state=42)
    # --- end
    prompts = []
    k = ntrain
    for i in range(0, test_df.shape[0]):
        # --- verbatim eval/mmlu/run_eval.py eval_hf_model()
        prompt_end = format_example(test_df, i, include_answer=False)
        train_prompt = gen_prompt(dev_df, subject, k)
        prompt = train_prompt + prompt_end
        # --- end
        prompts.append(prompt)
    return prompts
