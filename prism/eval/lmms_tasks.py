"""Our lmms-eval task variants, under `prism_` names that lmms-eval's built-in tasks cannot shadow
(method-reference §6.4: with `--include_path`, a built-in task of the same name wins silently).

Each variant is rendered at job time as a YAML that `include:`s the installed built-in task by absolute
path and overrides only what PRISM changes (§6.3): the task name, the answer read from the first
`<answer>` block before the built-in scoring, the token limit, no inherited tags, and a `metadata.source`
that the results file keeps, so a run can be checked to have used our variant. The wrappers below are
what the rendered YAMLs name with `!function`; lmms-eval imports them from this installed package.
"""

from __future__ import annotations

import importlib
import json
import os
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from prism.core.segments import first_answer

SOURCE = "prism"
# Base URL of the judge's OpenAI API (the evaluation job sets it); unset, no sample goes to a judge.
JUDGE_URL = "PRISM_JUDGE_URL"


@dataclass(frozen=True)
class Variant:
    """What our task changes in a built-in one. `scorer` gets the `<answer>` content: the built-in
    process_results (module:function) or our own; None where the built-in reads `<answer>` itself.
    `verdict` reads the rule's decision from a scored sample and `accept` marks it correct: with both, a
    sample the rule calls wrong goes to the judge (PRISM's fallback, method-reference §6.3)."""

    builtin_yaml: str
    max_new_tokens: int
    scorer: str | Callable[[dict, list], dict] | None = None
    verdict: Callable[[dict, dict], bool] | None = None
    accept: Callable[[dict, dict], dict] | None = None
    prompt: bool = False  # our `<task>_doc_to_text` replaces the built-in prompt


def _mathvision_score(doc: dict, results: list) -> dict:
    """MathVision's metric with our answer check (the RL reward's: rules, then math-verify). The built-in
    scorer imports latex2sympy2, whose antlr runtime cannot share an environment with math-verify's: the
    import fails and every sample then raises."""
    from prism.core.reward import judge

    truth, options = str(doc["answer"]), list(doc.get("options") or [])
    letter = len(truth) == 1 and 0 <= ord(truth) - ord("A") < len(options)
    value = str(options[ord(truth) - ord("A")]) if letter else ""
    scores = [bool(judge(str(r), truth) or (value and judge(str(r), value))) for r in results]
    return {"mathvision_standard_eval": {"response": results, "scores": scores}}


# PRISM's MathVision prompt asks for the answer in the tags its scoring reads, not lmms-eval's \boxed{}.
BOXED_INSTRUCTION = 'Please solve the problem step by step and put your answer in one "\\boxed{}".'
TAGS_INSTRUCTION = (
    "Please solve the problem step by step and put your final answer in <answer></answer> tags."
)


def prism_mathvision_testmini_doc_to_text(doc: dict, lmms_eval_specific_kwargs=None) -> str:
    text = builtin("mathvision.utils:mathvision_doc_to_text")(doc, lmms_eval_specific_kwargs)
    if BOXED_INSTRUCTION not in text:
        raise RuntimeError(
            f"lmms-eval's MathVision prompt no longer holds {BOXED_INSTRUCTION!r}: {text[:200]!r}"
        )
    return text.replace(BOXED_INSTRUCTION, TAGS_INSTRUCTION, 1)


def _mathvista_score(doc: dict, results: list) -> dict:
    """MathVista's built-in scoring with PRISM's quick_extract: true (the built-in reads false from its own
    mathvista.yaml): the `The answer is "..."` regex before the judge's extraction."""
    from lmms_eval.tasks.mathvista import utils

    evaluator, prediction = utils.mathvista_evaluator, str(results[0]).strip()
    problem = {
        "question_type": doc["question_type"],
        "answer_type": doc["answer_type"],
        "query": doc["query"],
        "choices": doc["choices"],
        "answer": doc.get("answer"),
        "precision": doc.get("precision", 0),
    }
    extraction = evaluator.extract_answer(prediction, problem, True)
    normalised = evaluator.normalize_extracted_answer(
        extraction, problem["choices"], problem["question_type"], problem["answer_type"], problem["precision"]
    )
    correct = evaluator.safe_equal(normalised, problem["answer"]) if problem["answer"] is not None else False
    result = {
        "question_id": doc["pid"],
        "query": doc["query"],
        "choices": doc["choices"],
        "answer": problem["answer"],
        "extraction": extraction,
        "prediction": normalised,
        "true_false": correct,
        "question_type": doc["question_type"],
        "answer_type": doc["answer_type"],
        "precision": problem["precision"],
        "metadata": doc["metadata"],
    }
    return {"llm_as_judge_eval": result, "submission": result}


def _mathverse_score(doc: dict, results: list) -> dict:
    """MathVerse's built-in scoring (its judge's binary verdict), where a judge that fails stops the run:
    the built-in counts the sample wrong and goes on."""
    from lmms_eval.tasks.mathverse import utils

    prediction, answer = str(results[0]).strip(), doc.get("answer")
    verdict = 0
    if answer is not None:
        server = utils.mathverse_evaluator.server
        judged = server.evaluate_binary(
            question=doc["question_for_eval"], answer=str(answer), prediction=prediction, output_format="0/1"
        )
        if not judged["success"]:
            raise RuntimeError(f"MathVerse's judge failed: {judged.get('raw_response')!r}")
        verdict = 1 if judged["result"] else 0
    keys = ("sample_index", "problem_index", "problem_version", "question", "question_type", "metadata")
    keys += ("query_wo", "query_cot", "question_for_eval")
    submission = {key: doc[key] for key in keys} | {
        "answer": answer,
        "prediction": prediction,
        "true_false": verdict == 1,
    }
    return {"gpt_eval_score": verdict, "submission": submission}


def _mathvision_verdict(doc: dict, scored: dict) -> bool:
    return bool(scored["mathvision_standard_eval"]["scores"][0])


def _mathvision_accept(doc: dict, scored: dict) -> dict:
    judged = scored["mathvision_standard_eval"]
    return {"mathvision_standard_eval": dict(judged, scores=[True, *judged["scores"][1:]])}


def _mathvista_verdict(doc: dict, scored: dict) -> bool:
    return bool(scored["llm_as_judge_eval"]["true_false"])


def _mathvista_accept(doc: dict, scored: dict) -> dict:
    judged = dict(scored["llm_as_judge_eval"], true_false=True)
    return dict(scored, llm_as_judge_eval=judged, submission=judged)


def _mmmu_verdict(doc: dict, scored: dict) -> bool:
    from lmms_eval.tasks.mmmu.utils import eval_multi_choice, eval_open

    sample = scored["mmmu_acc"]
    check = eval_multi_choice if sample["question_type"] == "multiple-choice" else eval_open
    return any(check(sample["answer"], pred) for pred in sample["parsed_pred"])


def _mmmu_accept(doc: dict, scored: dict) -> dict:
    from lmms_eval.tasks.mmmu.utils import normalize_str

    sample = scored["mmmu_acc"]
    multi = sample["question_type"] == "multiple-choice"
    # one prediction per response: a letter, or an open answer's list of normalised candidates
    parsed = [sample["answer"]] if multi else [normalize_str(str(sample["answer"]))]
    judged = dict(sample, parsed_pred=parsed)
    return dict(scored, mmmu_acc=judged, mmmu_acc_pass_at_k=judged)


def _mmmu_pro_verdict(doc: dict, scored: dict) -> bool:
    from lmms_eval.tasks.mmmu_pro.utils import eval_multi_choice

    return bool(eval_multi_choice(scored["mmmu_acc"]["answer"], scored["mmmu_acc"]["parsed_pred"]))


def _mmmu_pro_accept(doc: dict, scored: dict) -> dict:
    return dict(scored, mmmu_acc=dict(scored["mmmu_acc"], parsed_pred=scored["mmmu_acc"]["answer"]))


VARIANTS: dict[str, Variant] = {
    "prism_mathvista_testmini_cot": Variant(
        "mathvista/mathvista_testmini_cot.yaml",
        16384,
        _mathvista_score,
        _mathvista_verdict,
        _mathvista_accept,
    ),
    "prism_mathverse_testmini": Variant(  # its scoring is a judge already
        "mathverse/mathverse_testmini.yaml", 16384, _mathverse_score
    ),
    "prism_mathvision_testmini": Variant(
        "mathvision/mathvision_testmini.yaml",
        24576,
        _mathvision_score,
        _mathvision_verdict,
        _mathvision_accept,
        prompt=True,
    ),
    "prism_wemath_testmini_reasoning": Variant(  # reads <answer>; its judge is USE_LLM_JUDGE
        "wemath/reasoning/wemath_testmini_thinking.yaml", 49152
    ),
    "prism_mmmu_val": Variant(
        "mmmu/mmmu_val.yaml", 8192, "mmmu.utils:mmmu_process_results", _mmmu_verdict, _mmmu_accept
    ),
    "prism_mmmu_pro_vision": Variant(
        "mmmu_pro/mmmu_pro_vision.yaml",
        8192,
        "mmmu_pro.utils:mmmu_pro_process_results",
        _mmmu_pro_verdict,
        _mmmu_pro_accept,
    ),
    "prism_mmmu_pro_standard": Variant(
        "mmmu_pro/mmmu_pro_standard.yaml",
        8192,
        "mmmu_pro.utils:mmmu_pro_process_results",
        _mmmu_pro_verdict,
        _mmmu_pro_accept,
    ),
    "prism_hallusion_bench_image": Variant(  # yes/no rules first, then its own judge
        "hallusion_bench/hallusion_bench_image.yaml", 8192, "hallusion_bench.evaluate_hb:hb_process_results"
    ),
}


def answers_only(results: list) -> list:
    """Each response reduced to its first `<answer>` block; a response without one is passed whole."""
    return [(first_answer(r) or r) if isinstance(r, str) else r for r in results]


def builtin(reference: str):
    module, name = reference.split(":")
    return getattr(importlib.import_module(f"lmms_eval.tasks.{module}"), name)


def question_of(doc: dict) -> str:
    options = doc.get("options") or doc.get("choices")
    question = str(doc.get("query") or doc.get("question") or "")
    return f"{question}\nOptions: {options}" if options and "query" not in doc else question


def judge_agrees(question: str, truth: str, response: str, attempts: int = 3) -> bool:
    """The judge's binary verdict. A judge that cannot be reached stops the run: a silently skipped
    fallback would lower the score without a trace (method-reference §6.4)."""
    url = os.environ.get(JUDGE_URL)
    if not url:
        return False
    from lmms_eval.llm_judge.prompt import BINARY_JUDGE_PROMPT  # the prompt PRISM's fallback sends

    prompt = BINARY_JUDGE_PROMPT.format(
        question=question, answer=truth, prediction=response, positive="1", negative="0"
    )
    body = {
        "model": "judge",
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0,
        "max_tokens": 8,
    }
    request = urllib.request.Request(
        f"{url}/chat/completions", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=300) as reply:
                return json.load(reply)["choices"][0]["message"]["content"].strip().startswith("1")
        except (OSError, ValueError, KeyError) as err:
            if attempt == attempts - 1:
                raise RuntimeError(f"judge at {url} failed {attempts} times: {err}") from err
            time.sleep(2**attempt)
    return False


def answer_first(task: str):
    """process_results of `task`: the built-in one given the `<answer>` content, then the judge for a
    sample the rule calls wrong, shown the whole response as PRISM's fallback does."""
    variant = VARIANTS[task]
    scorer = variant.scorer if callable(variant.scorer) else builtin(variant.scorer)

    def process_results(doc, results):
        scored = scorer(doc, answers_only(results))
        if variant.verdict and not variant.verdict(doc, scored):
            if judge_agrees(question_of(doc), str(doc["answer"]), str(results[0])):
                scored = variant.accept(doc, scored)
        return scored

    process_results.__name__ = f"{task}_process_results"
    return process_results


def __getattr__(name: str):
    """`prism.eval.lmms_tasks.<task>_process_results`, made on first use (lmms-eval imports it by name)."""
    task = name.removesuffix("_process_results")
    if name.endswith("_process_results") and task in VARIANTS and VARIANTS[task].scorer:
        return answer_first(task)
    raise AttributeError(name)


class Function(str):
    """lmms-eval's `!function module.name` reference."""


class TaskDumper(yaml.SafeDumper):
    pass


TaskDumper.add_representer(Function, lambda dumper, value: dumper.represent_scalar("!function", value))


def variant_config(task: str, builtin_tasks: Path, extra: dict | None = None) -> dict:
    variant = VARIANTS[task]
    config = {
        "include": str(builtin_tasks / variant.builtin_yaml),
        "task": task,
        "tag": [],
        "generation_kwargs": {"max_new_tokens": variant.max_new_tokens},
        "metadata": {"source": SOURCE, "builtin": variant.builtin_yaml},
    }
    if variant.scorer:
        config["process_results"] = Function(f"prism.eval.lmms_tasks.{task}_process_results")
    if variant.prompt:
        config["doc_to_text"] = Function(f"prism.eval.lmms_tasks.{task}_doc_to_text")
    return config | (extra or {})


def write_tasks(tasks: list[str], directory: Path, builtin_tasks: Path | None = None) -> Path:
    """Render our variants of `tasks` into `directory` (lmms-eval's --include_path)."""
    if builtin_tasks is None:
        import lmms_eval.tasks

        builtin_tasks = Path(lmms_eval.tasks.__file__).parent
    unknown = [task for task in tasks if task not in VARIANTS]
    if unknown:
        raise ValueError(f"no prism variant of lmms-eval tasks {unknown}; ours are {sorted(VARIANTS)}")
    directory.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        rendered = yaml.dump(variant_config(task, builtin_tasks), Dumper=TaskDumper)
        (directory / f"{task}.yaml").write_text(rendered)
    return directory
