"""Evaluation with lmms-eval: the metric each paper column reads, the judge each task family reaches, the
command and chat template of a run, the judge server's health check, and, in lmms-eval's own environment,
real runs of our variants parsed into the fixed record, online and from the offline cache."""

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fake_hub import running_hub

from conftest import ROOT
from prism.core.config import load_config
from prism.core.prompts import SYSTEM_PROMPT
from prism.eval.fetch import benchmark_environment
from prism.eval.lmms import chat_template, judge_environment, lmms_eval_command
from prism.eval.normalise import ResultsError, benchmark_record, normalise

LMMS_PYTHON = ROOT / ".venv-lmms-eval" / "bin" / "python"


@pytest.fixture
def paper_eval(paper_config) -> dict:
    return load_config(paper_config).eval.stage_slice()


def lmms_results(values: dict[str, dict[str, float]]) -> dict:
    """lmms-eval's results.json shape: results[task]["<metric>,none"] and n-samples[task]."""
    return {
        "results": {
            task: {"alias": task, **{f"{k},none": v for k, v in m.items()}} for task, m in values.items()
        },
        "n-samples": {task: {"original": 100, "effective": 100} for task in values},
    }


def test_each_paper_column_reads_its_configured_task_metric_and_scale(paper_eval):
    scoring = paper_eval["scoring"]
    raw = lmms_results(
        {
            "prism_mmmu_pro_vision": {"mmmu_acc": 0.30, "mmmu_acc_pass_at_k": 0.9},
            "prism_mmmu_pro_standard": {"mmmu_acc": 0.40},
            "prism_hallusion_bench_image": {"aAcc": 61.5, "qAcc": 30.0, "fAcc": 20.0},
            "prism_mathverse_testmini": {"gpt_eval_score": 0.425},
        }
    )
    mmmu_pro = benchmark_record("mmmu_pro", scoring["mmmu_pro"], raw)
    assert mmmu_pro["score"] == pytest.approx(35.0)  # the mean of vision and standard, as a percent
    assert mmmu_pro["per_task"] == {"prism_mmmu_pro_vision": 0.30, "prism_mmmu_pro_standard": 0.40}
    assert (
        mmmu_pro["metric"] == "mmmu_acc,none"
        and mmmu_pro["n_samples"]["prism_mmmu_pro_vision"]["original"] == 100
    )
    assert (
        benchmark_record("hallusionbench", scoring["hallusionbench"], raw)["score"] == 61.5
    )  # aAcc, already %
    assert benchmark_record("mathverse", scoring["mathverse"], raw)["score"] == pytest.approx(42.5)
    assert benchmark_record("mathverse", scoring["mathverse"], raw)["lmms_eval"] == raw


def test_a_missing_task_or_metric_or_a_wrong_scale_is_named(paper_eval):
    scoring = paper_eval["scoring"]
    raw = lmms_results({"prism_mmmu_val": {"acc": 0.5}})
    with pytest.raises(ResultsError, match="no results for task 'prism_mathvista_testmini_cot'"):
        benchmark_record("mathvista", scoring["mathvista"], raw)
    with pytest.raises(ResultsError, match=r"no numeric 'mmmu_acc,none'; its metrics are \['acc,none'\]"):
        benchmark_record("mmmu", scoring["mmmu"], raw)
    percent = lmms_results({"prism_mmmu_val": {"mmmu_acc": 55.0}})
    with pytest.raises(ResultsError, match="outside 0-100; check eval.scoring.<benchmark>.scale"):
        benchmark_record("mmmu", scoring["mmmu"], percent)


def test_the_newest_results_file_is_found_wherever_lmms_eval_put_it(tmp_path, paper_eval):
    nested = tmp_path / "models__checkpoint"
    nested.mkdir()
    (nested / "20260101_000000_results.json").write_text(
        json.dumps(lmms_results({"prism_mmmu_val": {"mmmu_acc": 0.1}}))
    )
    newer = nested / "20260102_000000_results.json"
    newer.write_text(json.dumps(lmms_results({"prism_mmmu_val": {"mmmu_acc": 0.2}})))
    os.utime(newer, (2e9, 2e9))
    record = normalise("mmmu", paper_eval["scoring"]["mmmu"], tmp_path)
    assert record["score"] == pytest.approx(20.0) and record["results_file"] == str(newer)
    with pytest.raises(ResultsError, match="wrote no \\*_results.json"):
        normalise("mmmu", paper_eval["scoring"]["mmmu"], tmp_path / "empty")


def test_each_task_family_reaches_the_judge_the_way_it_reads_its_variables():
    assert judge_environment("llm_judge", 8000)["OPENAI_API_URL"] == "http://127.0.0.1:8000/v1"  # a base URL
    hallusion = judge_environment("openai", 8000)  # posted to as given: the full URL
    assert hallusion["OPENAI_API_URL"] == "http://127.0.0.1:8000/v1/chat/completions"
    reasoning = judge_environment("reasoning", 8000)
    assert reasoning["USE_LLM_JUDGE"] == "True" and reasoning["JUDGE_BASE_URL"] == "http://127.0.0.1:8000/v1"
    for family in ("fallback", "llm_judge", "openai", "reasoning"):  # our fallback, and a key for import time
        environment = judge_environment(family, 8000)
        assert environment["PRISM_JUDGE_URL"] == "http://127.0.0.1:8000/v1" and environment["OPENAI_API_KEY"]
    assert judge_environment("none", 8000) == {}  # no judge: our fallback is off, the rule decides


def test_a_judge_that_refused_a_request_stops_the_benchmark(tmp_path):
    """A 404 or 500 in the judge's access log (vLLM's uvicorn lines) fails the benchmark, naming it."""
    import subprocess as sp

    from prism.eval.lmms import JudgeServer

    log = tmp_path / "judge.log"
    log.write_text('INFO:     127.0.0.1:4242 - "GET /health HTTP/1.1" 200 OK\n')
    server = JudgeServer(sp.Popen([sys.executable, "-c", "import time; time.sleep(30)"]), 1, "judge-x", log)
    try:
        with open(log, "a") as sink:
            sink.write('INFO:     127.0.0.1:4243 - "POST /v1/chat/completions HTTP/1.1" 200 OK\n')
        server.check("mmmu")  # answered
        with open(log, "a") as sink:
            sink.write(
                'INFO:     127.0.0.1:4244 - "POST /v1/chat/completions/chat/completions HTTP/1.1" 404\n'
            )
        with pytest.raises(SystemExit, match=r"mathverse: the judge answered 1 request\(s\) with an error "):
            server.check("mathverse")
    finally:
        server.process.kill()
        server.process.wait()
    with pytest.raises(SystemExit, match="the judge exited .* during hallusionbench"):
        server.check("hallusionbench")


def test_a_run_uses_the_paper_sampling_our_tasks_and_the_model_first(paper_eval, tmp_path):
    command = lmms_eval_command(
        paper_eval,
        Path("/ckpt/prism/q3vl4b"),
        ["prism_mmmu_val"],
        tmp_path / "tasks",
        tmp_path / "t.jinja",
        tmp_path / "o",
        7,
    )
    assert command[command.index("--nproc_per_node=7") + 1 : command.index("--model")] == ["-m", "lmms_eval"]
    model_args = command[command.index("--model_args") + 1].split(",")
    assert model_args[0] == "model=/ckpt/prism/q3vl4b"  # lmms-eval names its output folder after the first
    # the model's limit is the task's (lmms-eval takes the larger of the two); the context holds it
    assert {"data_parallel_size=7", "max_new_tokens=8192", f"chat_template={tmp_path / 't.jinja'}"} <= set(
        model_args
    )
    assert "max_model_len=24576" in model_args and not any(a.startswith("seed=") for a in model_args)
    assert command[command.index("--gen_kwargs") + 1] == "temperature=1.0,top_p=0.7"
    assert command[command.index("--include_path") + 1] == str(tmp_path / "tasks")
    assert command[command.index("--verbosity") + 1] == "DEBUG"  # else a failed task still exits 0


def test_the_chat_template_adds_the_format_prompt_only_where_a_task_gives_none(tiny_dir, tmp_path):
    from jinja2 import Template

    template = Template(chat_template(tiny_dir))
    user = [{"role": "user", "content": "How many shapes?"}]
    prompted = template.render(messages=user, add_generation_prompt=True)
    assert SYSTEM_PROMPT in prompted and prompted.index(SYSTEM_PROMPT) < prompted.index("How many shapes?")
    own = [{"role": "system", "content": "Reason in <think>, answer in <answer>."}, *user]
    assert SYSTEM_PROMPT not in template.render(messages=own, add_generation_prompt=True)


# A judge's OpenAI server as far as readiness reads it: /health, and /v1/models listing the names it serves.
FAKE_VLLM = textwrap.dedent(
    """\
    import json, sys, time
    from http.server import BaseHTTPRequestHandler, HTTPServer
    port, names = int(sys.argv[1]), ["judge", "gpt-4", *sys.argv[2:]]
    time.sleep(1)  # loading the judge
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            models = {"data": [{"id": n} for n in names]}
            body = b"" if self.path == "/health" else json.dumps(models).encode()
            self.send_response(200); self.end_headers(); self.wfile.write(body)
    HTTPServer(("127.0.0.1", port), Handler).serve_forever()
    """
)


def test_a_judge_of_another_job_on_the_same_port_is_not_taken_for_ours(tmp_path):
    """Healthy and serving `judge` is not enough: readiness needs the name only our server was given."""
    from prism.cluster.ray_cluster import free_port
    from prism.eval.lmms import judge_ready

    (tmp_path / "fake_vllm.py").write_text(FAKE_VLLM)
    port = free_port()
    other = subprocess.Popen([sys.executable, str(tmp_path / "fake_vllm.py"), str(port), "judge-theirs"])
    try:
        deadline = time.time() + 30
        while not judge_ready(port, "judge-theirs") and time.time() < deadline:
            time.sleep(0.2)
        assert judge_ready(port, "judge-theirs") and not judge_ready(port, "judge-ours")
    finally:
        other.kill()
        other.wait()


# -------------------------------------------------------------------- in lmms-eval's own environment

needs_lmms_eval = pytest.mark.skipif(
    not LMMS_PYTHON.exists() and not os.environ.get("PRISM_REQUIRE_LMMS_EVAL"),
    reason="no .venv-lmms-eval (bash scripts/setup-lmms-eval.sh)",
)


def lmms(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    offline = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(cwd / "hf")}
    env = os.environ | offline | {"OPENAI_API_KEY": "EMPTY"} | env
    return subprocess.run(
        [str(LMMS_PYTHON), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def mathvista_rows(path: Path, answers: list[str]) -> None:
    """MathVista-shaped rows (the fields its prompt, scoring and aggregation read), images included."""
    import datasets
    from PIL import Image

    metadata = {
        "split": "testmini",
        "language": "english",
        "source": "synthetic",
        "category": "math-targeted-vqa",
        "task": "figure question answering",
        "context": "synthetic scene",
        "grade": "elementary school",
        "skills": ["arithmetic reasoning"],
    }
    n = len(answers)
    rows = {
        "pid": [str(i) for i in range(n)],
        "question": ["Which bar is taller?"] * n,
        "query": ["Which bar is taller? Choices: A, B"] * n,
        "question_type": ["multi_choice"] * n,
        "answer_type": ["text"] * n,
        "choices": [["A", "B"]] * n,
        "answer": answers,
        "precision": [0.0] * n,
        "unit": [""] * n,
        "metadata": [metadata] * n,
        "decoded_image": [Image.new("RGB", (32, 32)) for _ in range(n)],
    }
    datasets.Dataset.from_dict(rows).cast_column("decoded_image", datasets.Image()).to_parquet(str(path))


class FakeJudge:
    """An OpenAI chat endpoint on localhost that answers every question with `verdict`, or with
    `verdict(prompt)` where it is a function, and keeps the questions."""

    def __init__(self, verdict: str | Callable[[str], str]):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        asked = self.asked = []
        answer = verdict if callable(verdict) else lambda prompt: verdict

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                question = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                asked.append(question)
                content = answer(question["messages"][0]["content"])
                reply = {"choices": [{"message": {"role": "assistant", "content": content}}]}
                body = json.dumps(reply).encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.mark.lmms_eval
@needs_lmms_eval
def test_a_real_lmms_eval_run_of_our_variant_is_normalised_into_the_benchmark_record(tmp_path, paper_eval):
    """lmms-eval's dummy model answers every question in the paper's format with A. Our variant hands
    MathVista's scoring the <answer> content: 2 of 4 right by the rule. The two it calls wrong go to the
    judge, with the whole response; it agrees with the one whose truth is B. (Without a judge the rule's
    verdict stands: test_benchmarks_fetched_once_are_evaluated_offline_from_the_cache.)"""
    mathvista_rows(tmp_path / "testmini.parquet", ["A", "B", "C", "A"])
    data = {
        "dataset_path": "parquet",
        "dataset_kwargs": {"data_files": {"testmini": str(tmp_path / "testmini.parquet")}},
    }
    script = textwrap.dedent(
        """\
        import json, sys
        from pathlib import Path
        import lmms_eval.tasks, yaml
        from prism.eval.lmms_tasks import TaskDumper, variant_config
        builtin = Path(lmms_eval.tasks.__file__).parent
        config = variant_config("prism_mathvista_testmini_cot", builtin, json.loads(sys.argv[1]))
        Path("tasks").mkdir()
        Path("tasks/prism_mathvista_testmini_cot.yaml").write_text(yaml.dump(config, Dumper=TaskDumper))
        """
    )
    assert lmms("-c", script, json.dumps(data), cwd=tmp_path).returncode == 0

    def truth(answer: str) -> str:  # as lmms-eval's BINARY_JUDGE_PROMPT states it
        return f"Ground Truth Answer:\n```\n{answer}\n```"

    judge = FakeJudge(lambda prompt: "1" if truth("B") in prompt else "0")
    response = "<caption>two bars</caption><think>the left one is taller</think><answer>A</answer>"
    flags = [
        "--model",
        "dummy",
        "--model_args",
        f"response={response}",
        "--tasks",
        "prism_mathvista_testmini_cot",
    ]
    flags += ["--include_path", "tasks", "--batch_size", "1", "--output_path", "out", "--log_samples"]
    flags += ["--gen_kwargs", "temperature=1.0,top_p=0.7", "--verbosity", "DEBUG", "--timezone", "UTC"]
    result = lmms("-m", "lmms_eval", *flags, cwd=tmp_path, PRISM_JUDGE_URL=judge.url)
    assert result.returncode == 0, result.stderr[-3000:]

    record = normalise("mathvista", paper_eval["scoring"]["mathvista"], tmp_path / "out")
    assert record["score"] == pytest.approx(75.0) and record["metric"] == "llm_as_judge_eval,none"
    assert record["n_samples"] == {"prism_mathvista_testmini_cot": {"original": 4, "effective": 4}}
    config = record["lmms_eval"]["configs"]["prism_mathvista_testmini_cot"]
    assert config["metadata"]["source"] == "prism"  # only our YAML sets this: the task that ran is ours
    assert config["generation_kwargs"]["temperature"] == 1.0 and config["generation_kwargs"]["top_p"] == 0.7
    assert config["generation_kwargs"]["max_new_tokens"] == 16384
    prompts = [question["messages"][0]["content"] for question in judge.asked]
    assert len(prompts) == 2  # only the samples the rule called wrong
    # lmms-eval's own BINARY_JUDGE_PROMPT, filled with the truth and the whole response as lmms-eval hands
    # it on: its default reasoning_tags drop the <think> block
    for answer in ("B", "C"):
        assert sum(truth(answer) in prompt for prompt in prompts) == 1
    for prompt in prompts:
        assert "assessing answer correctness" in prompt
        assert "<caption>two bars</caption><answer>A</answer>" in prompt


# A data set card naming the split's files, as the Hub's parquet repos have
CARD = b"---\nconfigs:\n- config_name: default\n  data_files: [{split: testmini, path: data/*}]\n---\n"


@pytest.mark.lmms_eval
@needs_lmms_eval
def test_benchmarks_fetched_once_are_evaluated_offline_from_the_cache(tmp_path, paper_eval):
    """fetch_benchmarks has lmms-eval build our MathVista variant against a Hub (a fake one on localhost
    serving AI4Math/MathVista), which fills the cache; an lmms-eval run in the evaluation job's environment
    then reads only that cache, without one request to the Hub."""
    mathvista_rows(tmp_path / "testmini.parquet", ["A", "B", "A"])
    cache, spec = tmp_path / "benchmarks", {"mathvista": ["prism_mathvista_testmini_cot"]}
    with running_hub() as hub:
        endpoint = {"HF_ENDPOINT": f"http://127.0.0.1:{hub.server_port}", "NO_PROXY": "127.0.0.1"}
        online = endpoint | {"HF_HUB_OFFLINE": "0", "HF_DATASETS_OFFLINE": "0", "HF_HUB_DISABLE_XET": "1"}
        command = ["-m", "prism.eval.fetch", "--config", json.dumps(spec), "--out", str(cache)]
        missing = lmms(*command, cwd=tmp_path, HF_TOKEN="hf_test", **online)  # the task asks for a token
        assert missing.returncode != 0 and not (cache / "manifest.json").exists()
        assert "fetch: mathvista: lmms-eval could not load the data sets of" in missing.stderr
        assert "No manifest was written" in missing.stderr and "Traceback" not in missing.stderr

        rows = (tmp_path / "testmini.parquet").read_bytes()
        hub.repos[("datasets", "AI4Math/MathVista")] = {"README.md": CARD, "data/testmini.parquet": rows}
        fetched = lmms(*command, cwd=tmp_path, HF_TOKEN="hf_test", **online)
        assert fetched.returncode == 0, fetched.stderr[-3000:]
        manifest = json.loads((cache / "manifest.json").read_text())
        assert manifest["metrics"]["mathvista"]["prism_mathvista_testmini_cot"] == {
            "dataset": "AI4Math/MathVista",
            "config": None,
            "split": "testmini",
            "rows": 3,
        }
        asked = len(hub.requests)

        job = endpoint | benchmark_environment(cache, offline=True)
        response = "<caption>two bars</caption><think>the left one</think><answer>A</answer>"
        flags = ["--model", "dummy", "--model_args", f"response={response}"]
        flags += ["--tasks", "prism_mathvista_testmini_cot", "--include_path", str(cache / "tasks")]
        flags += ["--batch_size", "1", "--output_path", "out", "--verbosity", "DEBUG"]
        # with a token, as a job may have one: only the offline variables keep it from asking the Hub
        env = os.environ | job | {"HF_TOKEN": "hf_test", "HF_HOME": str(tmp_path / "job-home")}
        result = subprocess.run(
            [str(LMMS_PYTHON), "-m", "lmms_eval", *flags],
            cwd=tmp_path,
            env=env | {"OPENAI_API_KEY": "EMPTY"},
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        assert hub.requests[asked:] == []
    assert normalise("mathvista", paper_eval["scoring"]["mathvista"], tmp_path / "out")["score"] == (
        pytest.approx(66.67)
    )


@pytest.mark.lmms_eval
@needs_lmms_eval
@pytest.mark.parametrize(("verdict", "accuracy"), [("1", 1.0), ("0", 0.0)])
def test_mmmu_answers_the_rule_calls_wrong_are_put_to_the_judge(tmp_path, verdict, accuracy):
    """The built-in MMMU and MMMU-Pro scoring, as their aggregation counts it, after our fallback."""
    script = textwrap.dedent(
        """\
        import json
        from lmms_eval.tasks.mmmu.utils import evaluate_mmmu
        from lmms_eval.tasks.mmmu_pro.utils import evaluate_mmmu as evaluate_mmmu_pro
        from prism.eval import lmms_tasks
        wrong = "<caption>a chart</caption><think>the third</think><answer>C</answer>"
        choice = {"id": "validation_Math_1", "question_type": "multiple-choice", "answer": "B",
                  "options": "['1', '2', '3', '4']", "question": "What is 1+1?"}
        open_ended = {"id": "validation_Math_2", "question_type": "open", "answer": "2.5", "options": "[]",
                      "question": "Half of 5?"}
        vision = {"id": "test_Math_1", "subject": "Math", "answer": "B"}  # the question is in the image
        score = lmms_tasks.prism_mmmu_val_process_results
        halves = "<answer>five halves</answer>"
        mmmu = [score(choice, [wrong])["mmmu_acc"], score(open_ended, [halves])["mmmu_acc"]]
        pro = lmms_tasks.prism_mmmu_pro_vision_process_results(vision, [wrong])["mmmu_acc"]
        print(json.dumps([evaluate_mmmu(mmmu)[1]["acc"], evaluate_mmmu_pro([pro])[1]["acc"]]))
        """
    )
    judge = FakeJudge(verdict)
    result = lmms("-c", script, cwd=tmp_path, PRISM_JUDGE_URL=judge.url)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == [accuracy, accuracy]
    assert len(judge.asked) == 3  # each answer the rule calls wrong, once
    assert "Options: ['1', '2', '3', '4']" in judge.asked[0]["messages"][0]["content"]


@pytest.mark.lmms_eval
@needs_lmms_eval
def test_mathvision_is_scored_with_our_answer_check_where_the_builtin_cannot_import(tmp_path):
    """In lmms-eval's environment the built-in MathVision scorer cannot import latex2sympy2 beside
    math-verify; ours gives the built-in aggregation what it reads."""
    script = textwrap.dedent(
        """\
        import json
        from lmms_eval.tasks.mathvision.utils import mathvision_aggregate_results_eval
        from prism.eval.lmms_tasks import prism_mathvision_testmini_process_results as score
        docs = [({"answer": "B", "options": ["1", "2", "3"]}, "<answer>2</answer>"),  # the option's value
                ({"answer": "B", "options": ["1", "2", "3"]}, "<answer>(B)</answer>"),
                ({"answer": "0.5", "options": []}, "<think>half</think><answer>\\\\frac{1}{2}</answer>"),
                ({"answer": "7", "options": []}, "<answer>8</answer>")]
        scored = [score(doc, [response])["mathvision_standard_eval"] for doc, response in docs]
        print(json.dumps(mathvision_aggregate_results_eval(scored)))
        """
    )
    result = lmms("-c", script, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == 75.0


FAKE_LMMS_EVAL = textwrap.dedent(
    """\
    import json, os, sys
    from pathlib import Path
    out, tasks = Path(sys.argv[1]), sys.argv[2].split(",")
    if os.environ.get("FAIL_ON") in tasks:
        sys.exit(1)
    judge = ("CUDA_VISIBLE_DEVICES", "OPENAI_API_URL", "PRISM_JUDGE_URL")
    seen = {k: os.environ.get(k) for k in (*judge, "HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    (out / "models__ckpt").mkdir(parents=True)
    results = {t: {"mmmu_acc,none": 0.5, "aAcc,none": 61.0, "llm_as_judge_eval,none": 70.0} for t in tasks}
    samples = {t: {"original": 10, "effective": 10} for t in tasks}
    payload = {"results": results, "n-samples": samples, "seen": seen}
    (out / "models__ckpt" / "20260101_000000_results.json").write_text(json.dumps(payload))
    """
)


def test_an_evaluation_job_serves_the_judge_runs_each_benchmark_and_resumes(
    paper_eval, tmp_path, monkeypatch, tiny_dir
):
    """The job's orchestration with vLLM and lmms-eval stood in for: one run per benchmark on the GPUs the
    judge leaves, each with its family's judge URL, normalised; a failed benchmark is all a rerun redoes."""
    from types import SimpleNamespace

    from prism.core.manifest import write_manifest
    from prism.eval import lmms

    vllm = tmp_path / "fake_vllm.py"
    vllm.write_text(FAKE_VLLM)
    monkeypatch.setattr(
        lmms, "judge_command", lambda model, judge, port, name: [sys.executable, str(vllm), str(port), name]
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    fake = tmp_path / "fake_lmms_eval.py"
    fake.write_text(FAKE_LMMS_EVAL)
    monkeypatch.setattr(lmms, "write_tasks", lambda tasks, directory: directory)
    monkeypatch.setattr(
        lmms,
        "lmms_eval_command",
        lambda cfg, model, tasks, include, template, out, gpus: [
            sys.executable,
            str(fake),
            str(out),
            ",".join(tasks),
        ],
    )
    cfg = paper_eval | {"benchmarks": ["mmmu", "hallusionbench", "mmmu_pro"]}
    cfg["judge"] = cfg["judge"] | {"startup_timeout_s": 30}
    write_manifest(tmp_path / "judge" / "manifest.json", "judge", [], {})
    args = SimpleNamespace(
        config=cfg, model=tiny_dir, judge=tmp_path / "judge", benchmarks=tmp_path / "benchmarks",
        out=tmp_path / "out", work=tmp_path / "work", gpus_per_node=4, inputs=[tiny_dir, tmp_path / "judge"],
    )  # fmt: skip

    monkeypatch.setenv("FAIL_ON", "prism_mmmu_pro_vision")
    with pytest.raises(SystemExit, match="lmms-eval failed on mmmu_pro .*rerun to resume from it"):
        lmms.run(args)
    assert sorted(p.name for p in (args.work / "scores").iterdir()) == ["hallusionbench.json", "mmmu.json"]
    assert not (args.out / "manifest.json").exists()

    monkeypatch.delenv("FAIL_ON")
    (args.work / "scores" / "mmmu.json").write_text(
        (args.work / "scores" / "mmmu.json").read_text().replace('"score": 50.0', '"score": 49.0')
    )  # kept from the first attempt, not rerun
    lmms.run(args)
    scores = {b: json.loads((args.out / f"{b}.json").read_text()) for b in cfg["benchmarks"]}
    assert {b: r["score"] for b, r in scores.items()} == {
        "mmmu": 49.0,
        "hallusionbench": 61.0,
        "mmmu_pro": 50.0,
    }
    seen = scores["hallusionbench"]["lmms_eval"]["seen"]
    assert seen["CUDA_VISIBLE_DEVICES"] == "1,2,3"  # GPU 0 serves the judge
    assert seen["OPENAI_API_URL"].endswith("/v1/chat/completions") and seen["PRISM_JUDGE_URL"].endswith("/v1")
    assert scores["mmmu"]["lmms_eval"]["seen"]["OPENAI_API_URL"] is None  # no judge family for MMMU
    # the data sets come from the fetched cache, offline
    assert (seen["HF_HUB_OFFLINE"], seen["HF_HUB_CACHE"]) == ("1", str(tmp_path / "benchmarks" / "hub"))
    manifest = json.loads((args.out / "manifest.json").read_text())
    peaks = manifest["metrics"].pop("peak_memory")
    assert manifest["metrics"] == {"mmmu": 49.0, "hallusionbench": 61.0, "mmmu_pro": 50.0}
    # no GPU answers nvidia-smi here: the largest child's peak RSS (the stand-ins, a Python each)
    assert list(peaks) == ["child_rss_gib"] and len(peaks["child_rss_gib"]) == 1
    assert 0.005 < peaks["child_rss_gib"][0] < 2
    assert SYSTEM_PROMPT.splitlines()[0] in (args.work / "chat_template.jinja").read_text()

    # a benchmark whose scoring uses no judge: none is started, and the model has every GPU
    unjudged = paper_eval["scoring"]["mmmu"] | {"judge": "none"}
    plain = {k: v for k, v in paper_eval.items() if k != "judge"}
    plain |= {"benchmarks": ["mmmu"], "scoring": {"mmmu": unjudged}}
    monkeypatch.setattr(lmms, "judge_command", lambda *a: pytest.fail("no benchmark here uses the judge"))
    alone = dict(vars(args), config=plain, judge=None, work=tmp_path / "w2", out=tmp_path / "o2")
    lmms.run(SimpleNamespace(**alone))
    seen = json.loads((tmp_path / "o2" / "mmmu.json").read_text())["lmms_eval"]["seen"]
    assert seen["CUDA_VISIBLE_DEVICES"] == "0,1,2,3" and seen["PRISM_JUDGE_URL"] is None
