"""Live curves: every training stage logs the scalars of its metrics.csv to TensorBoard event files under
its work directory (read back here with TensorBoard's own reader), one run per attempt whose steps carry on
from the resumed step; the paper config's tracking rendered into verl, LLaMA-Factory and Accelerate; W&B
offline runs kept under the job, with no key in anything we write."""

from __future__ import annotations

import copy
import csv
import json
import subprocess
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import ROOT, SECRETS, files_holding_secrets, merged_tiny_config
from prism.core.config import ConfigError, load_config
from prism.core.tracking import (
    EVENTS,
    accelerate_init_kwargs,
    accelerate_settings,
    job_tracking,
    llamafactory_environment,
    llamafactory_settings,
)
from prism.core.training import TrainingRun
from prism.data.__main__ import main as make_data

WANDB = {
    "backends": ["tensorboard", "wandb"],
    "project": "prism",
    "wandb": {"entity": "lab", "mode": "offline"},
}


def scalars(run_dir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} of every event file in one TensorBoard run directory."""
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def csv_curves(path: Path) -> dict[str, dict[int, float]]:
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    return {
        name: {int(r["step"]): float(r[name]) for r in rows if r[name]} for name in rows[0] if name != "step"
    }


def paper_tracking(paper_config: dict, overlay: dict | None = None) -> dict:
    """The `--tracking` argument the rules pass for the paper config (rules/common.smk: tracking_arg)."""
    raw = copy.deepcopy(paper_config)
    raw["tracking"] = {**raw.get("tracking", {}), **(overlay or {})}
    return load_config(raw).tracking.model_dump() | {"work_root": "work"}


def test_tracking_defaults_to_tensorboard_and_refuses_what_no_engine_has(paper_config):
    assert load_config(paper_config).tracking.model_dump() == {
        "backends": ["tensorboard"],
        "project": "prism",
        "wandb": {"entity": "", "mode": "online"},
    }
    for block, expected in (
        ({"backends": ["mlflow"]}, "tracking.backends.0: Input should be 'tensorboard' or 'wandb'"),
        ({"backends": ["wandb", "wandb"]}, "tracking: backends lists a backend twice"),
        ({"backends": []}, "tracking.backends: List should have at least 1 item"),
        ({"wandb": {"mode": "shared"}}, "tracking.wandb.mode: Input should be 'online' or 'offline'"),
        ({"wandb": {"api_key": "x"}}, "tracking.wandb.api_key: unknown key; allowed here: entity, mode"),
    ):
        with pytest.raises(ConfigError) as refused:
            load_config(paper_config | {"tracking": block})
        assert expected in str(refused.value)


def test_a_job_is_named_by_its_work_directory_and_each_attempt_is_a_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    work = Path("work/rl/qwen3-vl-4b/prism-grpo/0123456789abcdef")
    first = job_tracking({"work_root": "work"}, work, "rl")
    assert (first.run, first.attempt_name) == (
        "rl-qwen3-vl-4b-prism-grpo",
        "rl-qwen3-vl-4b-prism-grpo-attempt-001",
    )
    assert first.log_dir == (tmp_path / work / EVENTS / "attempt-001")
    first.log_dir.mkdir(parents=True)
    assert job_tracking({"work_root": "work"}, work, "rl").attempt == 2
    assert job_tracking(None, tmp_path / "elsewhere", "rl").run == "rl"  # a stage run by hand


def test_a_resumed_run_carries_on_its_curve_in_the_next_attempts_run(tmp_path):
    """Two attempts of one job through TrainingRun: the first stops after step 3 (state saved at steps 2
    and 4 of 8, so it resumes at 2); the second logs steps 3-8 in its own run."""
    model = torch.nn.Linear(2, 1)
    args = Namespace(
        work=tmp_path / "work", out=tmp_path / "out", config={"lr": 0.1}, inputs=[], tracking=None
    )
    args.out.mkdir()

    def attempt(last_step: int) -> TrainingRun:
        run = TrainingRun(args, "rl", 8, {"model": model})
        for step in run.steps():
            if step == last_step:
                break
            run.record(step + 1, reward=step / 10, pg_loss=-step)
        return run

    first = attempt(last_step=3)
    first.curves.close()  # the killed attempt's writer: its events were flushed step by step already
    second = attempt(last_step=8)
    assert second.start == 2
    second.finish({})
    runs = sorted((args.work / EVENTS).iterdir())
    assert [r.name for r in runs] == ["attempt-001", "attempt-002"]
    assert sorted(scalars(runs[0])["rl/reward"]) == [1, 2, 3]
    assert sorted(scalars(runs[1])["rl/reward"]) == [3, 4, 5, 6, 7, 8]
    # the curve the report draws (metrics.csv, rows past the resumed step dropped) is the later attempt's
    curve = csv_curves(args.out / "metrics.csv")["reward"]
    merged = scalars(runs[0])["rl/reward"] | scalars(runs[1])["rl/reward"]
    assert curve == pytest.approx(merged) and sorted(curve) == list(range(1, 9))


@pytest.fixture(scope="module")
def align_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("align-data")
    spec = {"source": "synthetic", "synthetic": {"examples": 8, "seed": 0}}
    make_data(["dataset", "--name", "align", "--config", json.dumps(spec), "--out", str(out)])
    return out


def test_a_cpu_alignment_stage_logs_every_metric_of_its_csv_read_back_by_tensorboard(
    tiny_dir, disc_dir, align_data, tmp_path, monkeypatch
):
    """Two steps of the CPU alignment engine as the rule runs it (`--tracking` with the work root)."""
    from prism.align import cpu
    from prism.core.training import stage_parser

    monkeypatch.chdir(tmp_path)
    tiny = load_config(merged_tiny_config())
    config = tiny.align.stage_slice() | {"steps": 2, "prompts_per_step": 2, "rollouts_per_prompt": 2}
    config["max_response_length"] = 16
    tracking = json.dumps(tiny.tracking.model_dump() | {"work_root": "work"})
    argv = ["--config", json.dumps(config), "--model", str(tiny_dir), "--disc", str(disc_dir), "--data"]
    argv += [str(align_data), "--out", "out", "--work", "work/align/tiny", "--tracking", tracking]
    args = stage_parser("python -m prism.align", "", ("model", "disc", "data")).parse_args(argv)
    # as run_stage hands the arguments on (the discriminator fixture has no manifest for it to check)
    args.inputs, args.work = [], args.work / "0123456789abcdef"
    Path("out").mkdir()
    cpu.run(args)

    (run_dir,) = Path("work/align/tiny").glob(f"*/{EVENTS}/attempt-001")
    assert job_tracking(json.loads(tracking), args.work, "").run == "align-tiny"
    logged = scalars(run_dir)
    expected = csv_curves(Path("out/metrics.csv"))
    assert {"pg_loss", "valid_ratio", "caption_score", "reasoning_score", "response_length"} <= set(expected)
    assert sorted(logged) == sorted(f"align/{name}" for name in expected)
    for name, curve in expected.items():
        assert logged[f"align/{name}"] == pytest.approx(curve, abs=1e-5), name
    assert sorted(logged["align/pg_loss"]) == [1, 2]


def test_the_warmup_logs_through_accelerates_trackers(tmp_path):
    """The warmup's Accelerator as the stage builds it (log_with, project_dir), and its curves logger."""
    from accelerate.state import AcceleratorState, GradientState

    from prism.core.tracking import AcceleratedCurves
    from prism.discriminator.accelerated import accelerator_for

    tracking = job_tracking(None, tmp_path / "work", "warmup_discriminator")
    accelerator = accelerator_for("cpu", 1, 2, tracking)
    try:
        curves = AcceleratedCurves(accelerator, tracking, "warmup", {"warmup": {"lr": 1e-5, "epochs": 1}})
        for step in (1, 2):
            curves.log(step, {"loss": 0.7 / step, "gap": 0.1 * step})
        curves.close()
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    logged = scalars(tracking.log_dir / "prism")
    assert logged["warmup/loss"] == pytest.approx({1: 0.7, 2: 0.35})
    assert sorted(logged["warmup/gap"]) == [1, 2]


def test_the_paper_configs_gpu_engines_get_its_tracking_in_their_own_settings(paper_config, tmp_path):
    from prism.verl import run as verl_run
    from prism.verl.command import align_settings, hydra_value, rl_settings
    from prism.verl.run import compose

    cfg = load_config(paper_config)
    work = tmp_path / "work"
    args = Namespace(
        model=tmp_path / "m",
        data=tmp_path / "d",
        out=tmp_path / "results/models/rl/qwen3-vl-4b/prism-grpo",
        work=work / "rl/qwen3-vl-4b/prism-grpo/0123456789abcdef",
        nodes=1,
        gpus_per_node=8,
        tracking=paper_tracking(paper_config) | {"work_root": str(work)},
    )
    rl = rl_settings(cfg.rl.job_slice("grpo"), verl_run.trainer_job(args, "rl-x"))
    rendered = {key: rl[key] for key in ("trainer.logger", "trainer.project_name", "trainer.experiment_name")}
    print("verl (rl):", rendered)
    assert rendered == {
        "trainer.logger": ["console", "file", "tensorboard"],
        "trainer.project_name": "prism",
        "trainer.experiment_name": "rl-qwen3-vl-4b-prism-grpo",
    }
    verl_trainer = compose([f"{k}={hydra_value(v)}" for k, v in rendered.items()]).trainer
    assert list(verl_trainer.logger) == rendered["trainer.logger"]
    align = align_settings(cfg.align.stage_slice(), verl_run.trainer_job(args, "align-x"), tmp_path / "disc")
    assert align["trainer.logger"] == ["console", "file", "tensorboard"]

    # the attempt's TensorBoard (and W&B) directories reach verl's TaskRunner in the Ray job's environment
    argv_file = tmp_path / "argv.json"
    entry = ["-c", f"import json, sys; json.dump(sys.argv[1:], open({str(argv_file)!r}, 'w'))"]
    assert verl_run.train(entry, [], args.work, args.tracking | WANDB) == 0
    env_vars = {
        a.split("=", 1)[0].rsplit(".", 1)[1]: a.split("=", 1)[1]
        for a in json.loads(argv_file.read_text())
        if a.startswith("+ray_kwargs.ray_init.runtime_env.env_vars.")
    }
    print("verl (Ray job environment):", env_vars)
    attempt = str(args.work.resolve() / EVENTS / "attempt-001")
    assert env_vars["TENSORBOARD_DIR"] == attempt and env_vars["WANDB_DIR"] == attempt
    assert env_vars["WANDB_MODE"] == "offline" and env_vars["WANDB_RUN_GROUP"] == "rl-qwen3-vl-4b-prism-grpo"
    assert not [name for name in env_vars if "KEY" in name or "TOKEN" in name]

    sft = job_tracking(
        paper_tracking(paper_config) | {"work_root": str(work)}, work / "sft/qwen3-vl-8b/f", "sft"
    )
    print("LLaMA-Factory:", llamafactory_settings(sft), llamafactory_environment(sft))
    assert llamafactory_settings(sft) == {
        "report_to": ["tensorboard"],
        "run_name": "sft-qwen3-vl-8b-attempt-001",
    }
    assert llamafactory_environment(sft) == {"TENSORBOARD_LOGGING_DIR": str(sft.log_dir)}

    warm = job_tracking(
        paper_tracking(paper_config) | {"work_root": str(work)}, work / "discriminator/warmup/f", ""
    )
    print("Accelerate:", accelerate_settings(warm), accelerate_init_kwargs(warm, {})["project_name"])
    assert accelerate_settings(warm) == {"log_with": ["tensorboard"], "project_dir": str(warm.log_dir)}
    assert warm.run == "discriminator-warmup"


def test_verls_own_tracker_writes_where_the_job_says(tmp_path, monkeypatch):
    """verl 0.9.1's Tracking with the `tensorboard` backend, given the TENSORBOARD_DIR the job sets."""
    from verl.utils.tracking import Tracking

    tracking = job_tracking(None, tmp_path / "work", "rl-x")
    monkeypatch.setenv("TENSORBOARD_DIR", str(tracking.log_dir))
    tracker = Tracking("prism", tracking.run, ["tensorboard"])
    for step in (3, 4):  # a resumed attempt: verl logs from its global step
        tracker.log({"critic/score/mean": step / 10, "actor/pg_loss": -step}, step=step)
    tracker.logger["tensorboard"].finish()
    logged = scalars(tracking.log_dir)
    assert logged["critic/score/mean"] == pytest.approx({3: 0.3, 4: 0.4})


def test_llamafactorys_trainer_writes_tensorboard_where_the_job_says(tmp_path):
    """The HF Trainer's TensorBoard callback in LLaMA-Factory's environment, with the rendered settings."""
    python = ROOT / ".venv-llamafactory/bin/python"
    if not python.exists():
        pytest.skip("no .venv-llamafactory (scripts/setup-llamafactory.sh builds it)")
    tracking = job_tracking(None, tmp_path / "work", "sft-x")
    probe = (
        "import json, sys\n"
        "from transformers import TrainingArguments, TrainerState, TrainerControl\n"
        "from transformers.integrations import TensorBoardCallback\n"
        "args = TrainingArguments(output_dir=sys.argv[1], **json.loads(sys.argv[2]))\n"
        "callback, state = TensorBoardCallback(), TrainerState(is_world_process_zero=True, global_step=7)\n"
        "callback.on_train_begin(args, state, TrainerControl())\n"
        "callback.on_log(args, state, TrainerControl(), logs={'loss': 1.25})\n"
        "callback.on_train_end(args, state, TrainerControl())\n"
    )
    env = {"PATH": "/usr/bin:/bin", **llamafactory_environment(tracking)}
    settings = json.dumps(llamafactory_settings(tracking))
    result = subprocess.run(
        [str(python), "-c", probe, str(tmp_path / "out"), settings], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert scalars(tracking.log_dir)["train/loss"] == {7: 1.25}


def test_wandb_offline_keeps_its_run_under_the_job_and_no_key_anywhere(tmp_path, monkeypatch):
    """A CPU engine's curves with W&B offline (no network): the run is written under the attempt's
    directory for `wandb sync`, and the key in the environment reaches neither it nor the event files."""
    pytest.importorskip("wandb")
    from prism.core.tracking import Curves

    monkeypatch.setenv("WANDB_API_KEY", SECRETS["WANDB_API_KEY"])
    tracking = job_tracking(WANDB, tmp_path / "work", "rl-x")
    curves = Curves(tracking, "rl", {"lr": 1e-6})
    for step in (1, 2):
        curves.log(step, {"reward": step / 4})
    curves.close()
    (offline,) = (tracking.log_dir / "wandb").glob("offline-run-*")
    assert list(offline.glob("*.wandb"))
    assert scalars(tracking.log_dir)["rl/reward"] == {1: 0.25, 2: 0.5}
    assert files_holding_secrets(tmp_path) == []


@pytest.mark.pipeline
def test_the_tiny_runs_stages_left_event_files_with_their_csvs_scalars(tiny_run):
    """The session's tiny run: SFT, the warmup, alignment and each RL run logged every metrics.csv column
    at every step."""
    work, models = tiny_run / "tiny/work", tiny_run / "tiny/results/models"
    # each job's work directory (below it: the keyed one) -> its artifact
    jobs = {
        **{job: models / "sft" / job.name for job in work.glob("sft/*")},
        work / "discriminator/warmup": models / "discriminator/warm",
        **{job: models / "prism" / job.name for job in work.glob("align/*")},
        **{job: models / "rl" / job.parent.name / job.name for job in work.glob("rl/*/*")},
    }
    assert len(jobs) >= 4 and all(out.is_dir() for out in jobs.values())
    for job, out in jobs.items():
        logged = {}  # the attempts in order, a later one's steps replacing an earlier one's
        for run_dir in sorted(job.glob(f"*/{EVENTS}/attempt-*")):
            for path in [run_dir, *[p for p in run_dir.rglob("*") if p.is_dir()]]:
                for tag, curve in scalars(path).items():
                    if "/" in tag:
                        logged[tag.split("/", 1)[1]] = logged.get(tag.split("/", 1)[1], {}) | curve
        expected = csv_curves(out / "metrics.csv")
        assert set(expected) <= set(logged), (job, sorted(logged))
        for name, curve in expected.items():
            assert logged[name] == pytest.approx(curve, abs=1e-5), (job, name)
        print(job.relative_to(work), "->", sorted(logged))
