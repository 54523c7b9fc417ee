"""A verl job as the pipeline runs it: a failed attempt keeps its checkpoints, the rerun resumes from the
last saved step, and the artifact gets the whole curve and a manifest only once every step is done."""

import json
import textwrap
from types import SimpleNamespace

import pytest
import yaml

from prism.core.manifest import write_manifest
from prism.verl import run
from prism.verl.command import rl_settings
from prism.verl.run import run_verl, trainer_job

# Stands in for verl's trainer: resumes from the tracker, logs each step where the override for verl's
# TaskRunner says, saves every 2 steps, and can be made to crash after a given step. (verl's own
# TaskRunner writing that log on a Ray cluster: test_verl_ray.py.)
FAKE_TRAINER = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    args = dict(a.lstrip("+").split("=", 1) for a in sys.argv[1:])
    ckpt, total = Path(args["trainer.default_local_dir"]), int(args["trainer.total_training_steps"])
    assert args["trainer.resume_mode"] == "auto"
    tracker = ckpt / "latest_checkpointed_iteration.txt"
    start = int(tracker.read_text()) if tracker.exists() else 0
    with open(args["ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH"], "w") as log:
        for step in range(start + 1, total + 1):
            line = {"step": step, "data": {"critic/score/mean": step / 10, "tag": "x"}}
            log.write(json.dumps(line) + "\\n")
            if step % 2 == 0:
                (ckpt / f"global_step_{step}" / "actor").mkdir(parents=True)
                tracker.write_text(str(step))
            if step == int(os.environ.get("CRASH_AFTER", 0)):
                sys.exit(1)
    """
)


@pytest.fixture
def job(tmp_path, paper_config, monkeypatch):
    from prism.core.config import load_config

    for name in ("model", "data"):
        write_manifest(tmp_path / name / "manifest.json", name, [], {})
    config = load_config(paper_config).rl.job_slice("grpo") | {"steps": 6}
    args = SimpleNamespace(
        config=config,
        model=tmp_path / "model",
        data=tmp_path / "data",
        out=tmp_path / "out",
        work=tmp_path / "work",
        nodes=1,
        gpus_per_node=8,
    )
    args.inputs = [args.model, args.data]
    exported = []
    monkeypatch.setattr(run, "export_actor", lambda actor, out: exported.append(actor.parent.name))
    return args, rl_settings(config, trainer_job(args, "rl-test")), exported


def test_a_crashed_run_resumes_from_its_last_checkpoint(job, monkeypatch):
    args, settings, exported = job
    entry = ["-c", FAKE_TRAINER]
    monkeypatch.setenv("CRASH_AFTER", "3")
    with pytest.raises(SystemExit, match="exited with status 1 after saving step 2 of 6; rerun the job"):
        run_verl(args, "rl", entry, settings, "ppo_trainer")
    assert not (args.out / "manifest.json").exists()

    monkeypatch.delenv("CRASH_AFTER")
    run_verl(args, "rl", entry, settings, "ppo_trainer")
    manifest = json.loads((args.out / "manifest.json").read_text())
    assert manifest["metrics"]["steps"] == 6 and manifest["metrics"]["resumed_from"] == 2
    assert manifest["metrics"]["critic/score/mean"] == pytest.approx(0.6)
    assert "trainer.resume_mode=auto" in manifest["engine"]["overrides"]
    curve = (args.out / "metrics.csv").read_text().splitlines()
    assert curve[0] == "step,critic/score/mean" and [r.split(",")[0] for r in curve[1:]] == list("123456")
    assert exported == ["global_step_6"]
    resolved = yaml.safe_load((args.out / "verl_config.yaml").read_text())  # what verl ran with
    assert (resolved["trainer"]["total_training_steps"], resolved["data"]["max_response_length"]) == (6, 8192)


def test_a_run_trained_to_the_end_is_only_exported_on_rerun(job, monkeypatch):
    args, settings, exported = job
    run_verl(args, "rl", ["-c", FAKE_TRAINER], settings, "ppo_trainer")
    (args.out / "manifest.json").unlink()
    run_verl(args, "rl", ["-c", "raise SystemExit('must not train again')"], settings, "ppo_trainer")
    assert exported == ["global_step_6", "global_step_6"] and (args.out / "manifest.json").exists()


def test_a_trainer_that_stops_early_leaves_no_manifest(job):
    args, settings, _ = job
    stop_early = FAKE_TRAINER.replace("range(start + 1, total + 1)", "range(start + 1, 5)")
    with pytest.raises(SystemExit, match="last checkpoint is step 4 of 6"):
        run_verl(args, "rl", ["-c", stop_early], settings, "ppo_trainer")
    assert not (args.out / "manifest.json").exists()
