"""lmms-eval 0.7.3 engine: one evaluation job per model variant on one node.

- The judge (a vLLM OpenAI server) runs on the job's first GPU for the whole job and must answer
  `/health` and list its served name before any benchmark starts; it is stopped however the job ends.
- Each benchmark is one lmms-eval run (vLLM, data parallel over the other GPUs) with our task variants
  (prism/eval/lmms_tasks.py): the task families read conflicting judge variables (integration-reference
  §5.4), so they cannot share a process, and a failure costs one benchmark, not the job. The model is
  loaded once per benchmark, minutes against the hours of generation at 16k tokens.
- Sampling is the paper's (§6.1): `--gen_kwargs temperature,top_p` over every task, and a chat template
  that adds the caption/think/answer system prompt where a task gives none.
- The benchmarks' data sets are read offline from the cache `fetch_benchmarks` filled (prism/eval/fetch.py):
  compute nodes need no internet, and every job reads the same data.
- A finished benchmark's normalised record is kept in the work directory, so a rerun skips it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from prism.cluster.ray_cluster import stop
from prism.core.manifest import MANIFEST, write_json_atomic, write_manifest
from prism.core.prompts import SYSTEM_PROMPT
from prism.eval.fetch import benchmark_environment
from prism.eval.lmms_tasks import JUDGE_URL, write_tasks
from prism.eval.normalise import normalise

JUDGE_NAME = "judge"
# Names some lmms-eval tasks send whatever MODEL_VERSION says (HallusionBench asks for "gpt-4").
JUDGE_ALIASES = (JUDGE_NAME, "gpt-4", "gpt-4o-2024-11-20", "gpt-4o-mini")


def judge_environment(family: str, port: int) -> dict:
    """The variables each lmms-eval task family reads for its judge (lmms-eval 0.7.3)."""
    base = f"http://127.0.0.1:{port}/v1"
    # Our variants' fallback, and a key for the task modules that build a client on import.
    common = {JUDGE_URL: base, "OPENAI_API_KEY": "EMPTY"}
    openai = common | {"API_TYPE": "openai", "MODEL_VERSION": JUDGE_NAME}
    return {
        "none": common,
        "llm_judge": openai | {"OPENAI_API_URL": base},  # the provider appends /chat/completions
        "openai": openai | {"OPENAI_API_URL": f"{base}/chat/completions"},  # posted to as given
        "reasoning": common
        | {
            "USE_LLM_JUDGE": "True",
            "JUDGE_BASE_URL": base,
            "JUDGE_MODEL_NAME": JUDGE_NAME,
            "JUDGE_API_KEY": "EMPTY",
        },
    }[family]


def judge_command(model: Path, judge: dict) -> list[str]:
    return [
        "vllm",
        "serve",
        str(model),
        "--host",
        "127.0.0.1",
        "--port",
        str(judge["port"]),
        "--served-model-name",
        *JUDGE_ALIASES,
        "--max-model-len",
        str(judge["max_model_len"]),
        "--gpu-memory-utilization",
        str(judge["gpu_memory_utilization"]),
    ]


def judge_ready(port: int) -> bool:
    """Healthy, and serving the judge under the name the tasks send."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as health:
            if health.status != 200:
                return False
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as models:
            served = {entry["id"] for entry in json.load(models)["data"]}
    except (OSError, ValueError, KeyError):
        return False
    return JUDGE_NAME in served


@contextmanager
def judge_server(model: Path, judge: dict, gpu: str, log: Path, poll_s: float = 5.0):
    """The judge on `gpu`, up and checked before the body runs, and stopped when it ends."""
    env = os.environ | {"CUDA_VISIBLE_DEVICES": gpu}
    with open(log, "a") as sink:
        server = subprocess.Popen(
            judge_command(model, judge),
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.time() + judge["startup_timeout_s"]
        while not judge_ready(judge["port"]):
            if server.poll() is not None:
                sys.exit(f"eval: the judge server exited with status {server.returncode}; see {log}")
            if time.time() > deadline:
                sys.exit(f"eval: the judge was not ready within {judge['startup_timeout_s']} s; see {log}")
            time.sleep(poll_s)
        print(f"eval: judge {model.name} ready on port {judge['port']} (GPU {gpu})", flush=True)
        yield
    finally:
        stop([server])


def chat_template(model: Path) -> str:
    """The model's own chat template, with the paper's system prompt added where a task gives none."""
    if (model / "chat_template.jinja").is_file():  # where each checkpoint format keeps it
        template = (model / "chat_template.jinja").read_text()
    elif (model / "chat_template.json").is_file():
        template = json.loads((model / "chat_template.json").read_text())["chat_template"]
    else:
        template = json.loads((model / "tokenizer_config.json").read_text())["chat_template"]
    system = json.dumps({"role": "system", "content": SYSTEM_PROMPT})
    return (
        "{%- if messages[0]['role'] != 'system' %}"
        f"{{%- set messages = [{system}] + messages %}}"
        "{%- endif %}\n" + template
    )


def lmms_eval_command(
    cfg: dict, model: Path, tasks: list[str], include: Path, template: Path, out: Path, gpus: int
):
    """One lmms-eval run of `tasks` with vLLM, data parallel over `gpus` GPUs."""
    engine = cfg["lmms_eval"]
    data_parallel = max(1, gpus // engine["tensor_parallel"])
    model_args = ",".join(  # model= first: lmms-eval names its output folder after the first path-like key
        [
            f"model={model}",
            f"tensor_parallel_size={engine['tensor_parallel']}",
            f"data_parallel_size={data_parallel}",
            f"gpu_memory_utilization={engine['gpu_memory_utilization']}",
            f"max_pixels={engine['max_pixels']}",
            f"max_new_tokens={cfg['max_new_tokens']}",
            f"chat_template={template}",
            f"seed={cfg['seed']}",
            "is_qwen3_vl=True",
        ]
    )
    launcher = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={data_parallel}",
    ]
    return [
        *launcher,
        "-m",
        "lmms_eval",
        "--model",
        "vllm",
        "--model_args",
        model_args,
        "--tasks",
        ",".join(tasks),
        "--include_path",
        str(include),
        "--batch_size",
        str(engine["batch_size"]),
        "--gen_kwargs",
        f"temperature={cfg['temperature']},top_p={cfg['top_p']}",
        "--seed",
        str(cfg["seed"]),
        "--timezone",
        "UTC",
        "--output_path",
        str(out),
        "--log_samples",
        "--verbosity",
        "DEBUG",  # without it lmms-eval exits 0 when a task fails
    ]


def run(args) -> None:
    cfg, started = args.config, time.time()
    if args.judge is None or args.benchmarks is None:
        sys.exit("eval: the lmms_eval engine needs --judge MODEL_DIR and --benchmarks CACHE_DIR")
    model, work = args.model.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    default_devices = ",".join(map(str, range(args.gpus_per_node)))
    devices = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", default_devices).split(",") if d]
    if len(devices) < 2:
        sys.exit(f"eval: the lmms_eval engine needs 2 or more GPUs (the judge takes one); it sees {devices}")
    tasks = sorted({task for b in cfg["benchmarks"] for task in cfg["scoring"][b]["tasks"]})
    include = write_tasks(tasks, work / "tasks")
    template = work / "chat_template.jinja"
    template.write_text(chat_template(model))
    done = work / "scores"
    with judge_server(args.judge.resolve(), cfg["judge"], devices[0], work / "judge.log"):
        for benchmark in cfg["benchmarks"]:
            if (done / f"{benchmark}.json").is_file():
                print(f"eval: {benchmark} already scored in an earlier attempt", flush=True)
                continue
            scoring, output = cfg["scoring"][benchmark], work / "lmms_eval" / benchmark
            shutil.rmtree(output, ignore_errors=True)
            env = os.environ | judge_environment(scoring["judge"], cfg["judge"]["port"])
            env |= benchmark_environment(args.benchmarks.resolve(), offline=True)
            env |= {"CUDA_VISIBLE_DEVICES": ",".join(devices[1:])}
            command = lmms_eval_command(
                cfg, model, scoring["tasks"], include, template, output, len(devices) - 1
            )
            print(f"eval: {benchmark}: {' '.join(command)}", flush=True)
            if (status := subprocess.run(command, env=env, cwd=work).returncode) != 0:
                sys.exit(f"eval: lmms-eval failed on {benchmark} (status {status}); rerun to resume from it")
            record = normalise(benchmark, scoring, output)
            write_json_atomic(done / f"{benchmark}.json", record)
            print(f"eval: {benchmark} {record['score']:.1f} ({record['metric']})", flush=True)
    summary = {}
    for benchmark in cfg["benchmarks"]:
        record = json.loads((done / f"{benchmark}.json").read_text())
        write_json_atomic(args.out / f"{benchmark}.json", record)
        summary[benchmark] = record["score"]
    inputs = [Path(d) / MANIFEST for d in args.inputs]
    write_manifest(args.out / MANIFEST, "eval", inputs, cfg, summary, started, engine={"name": "lmms_eval"})
