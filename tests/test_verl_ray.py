"""verl's process boundaries on a CPU Ray cluster, started the way our Slurm launcher starts it (`ray start`,
so a driver's environment reaches no actor), with two fake GPUs.

- The critic config our Stage 2 command renders travels as verl's V1 trainer ships it (built in the
  TaskRunner actor, handed to verl's ResourcePoolManager -> RayClassWithInitArgs -> RayWorkerGroup) to
  worker processes, which load the warmed discriminator with verl's own loader.
- The step log verl's TaskRunner actor writes reaches the manifest and curves `run.py` writes.

What needs a GPU is left out: FSDP and the engine set-up (verl's TrainingWorker needs CUDA to start) and
the flash-attention kernel verl's loader asks for (the workers load with sdpa attention in its place).
"""

import json
import os
import subprocess
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from prism.cluster import ray_cluster
from prism.core.config import load_config
from prism.core.manifest import write_manifest
from prism.discriminator.model import Discriminator, render
from prism.verl import align, run
from prism.verl.command import align_settings

GPUS = 2


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """One Ray head for the module: 8 logical CPUs (a verl worker slot takes 3), two fake GPUs."""
    address, port = "127.0.0.1", ray_cluster.free_port()
    head = f"{address}:{port}"
    temp_dir = Path("/tmp") / f"ray_prism-verl-test-{os.getpid()}"
    env = ray_cluster.cluster_environment(head) | {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    process = subprocess.Popen(
        ray_cluster.head_command(address, port, 8, GPUS, temp_dir), env=env, start_new_session=True
    )
    try:
        ray_cluster.wait_for_nodes(env, 1, [process], timeout=120)
        yield env
    finally:
        ray_cluster.stop([process])


# ---- a Stage 2 job's verl driver: the critic workers get our class, run.py gets the step log ----

# verl's run_ppo (its ray.init with our runtime_env), then a TaskRunner that does what the V1 trainer does
# for the critic in _setup, with a worker class that loads the model where TrainingWorker would, and
# logs steps through verl's Tracking as its fit does.
STAGE2_DRIVER = """
    import json, os, sys
    import ray, torch
    from verl.single_controller.base import Worker
    from verl.single_controller.base.decorator import Dispatch, register
    from verl.trainer.main_ppo import run_ppo

    from prism.verl import align
    from prism.verl.run import compose

    INPUTS, RESULTS = sys.argv[1:3]  # travel with the classes below, pickled by value
    OVERRIDES = sys.argv[3:]  # run.py's

    class CriticProbe(Worker):
        def __init__(self, config):
            Worker.__init__(self)
            self.config = config

        @register(dispatch_mode=Dispatch.ONE_TO_ALL)
        def load_discriminator(self, inputs):
            import transformers
            from verl.utils.model import load_valuehead_model

            # flash-attention is a CUDA kernel: sdpa stands in for it
            check = transformers.PreTrainedModel._check_and_adjust_attn_implementation
            def on_cpu(model, implementation, *args, **kwargs):
                implementation = "sdpa" if implementation == "flash_attention_2" else implementation
                return check(model, implementation, *args, **kwargs)
            transformers.PreTrainedModel._check_and_adjust_attn_implementation = on_cpu

            model_config = self.config.model_config
            hf_config = model_config.hf_config
            hf_config.num_labels, hf_config.classifier_dropout = 1, 0.0  # what verl's FSDP engine sets
            module = load_valuehead_model(
                local_path=model_config.local_path,
                torch_dtype=torch.float32,
                model_config=hf_config,
                trust_remote_code=False,
            ).eval()
            with torch.no_grad():
                scores = module(**inputs).logits[:, -1, 0]
            engine = self.config.engine_config
            return {
                "pid": os.getpid(),
                "class": type(module).__name__,
                "scores": scores.tolist(),
                "budgets": [engine.max_token_len_per_gpu, engine.infer_max_token_len_per_gpu],
                "dynamic": engine.use_dynamic_bsz,
            }

    @ray.remote(num_cpus=1)
    class CriticRunner:
        def run(self, config):
            from pathlib import Path

            from verl.single_controller.ray import RayClassWithInitArgs, RayWorkerGroup
            from verl.single_controller.ray.base import create_colocated_worker_cls
            from verl.trainer.ppo.utils import Role
            from verl.utils.config import omega_conf_to_dataclass
            from verl.utils.tracking import Tracking
            from verl.workers.config import TrainingWorkerConfig

            from prism.verl.align_trainer import PrismAlignTrainer

            trainer = PrismAlignTrainer.__new__(PrismAlignTrainer)
            trainer.config = config
            trainer._init_resource_pool_mgr()  # verl's own roles and pools for this config
            trainer.resource_pool_manager.create_resource_pool()
            assert trainer.role_worker_mapping[Role.Critic].__ray_actor_class__.__name__ == "TrainingWorker"
            # as PPOTrainer._setup builds the critic (verl/trainer/ppo/v1/trainer_base.py)
            critic_cfg = omega_conf_to_dataclass(config.critic)
            critic_cfg.engine.infer_max_token_len_per_gpu = critic_cfg.ppo_infer_max_token_len_per_gpu
            critic_cfg.engine.max_token_len_per_gpu = critic_cfg.ppo_infer_max_token_len_per_gpu
            worker_cfg = TrainingWorkerConfig(
                model_type="value_model",
                model_config=critic_cfg.model,
                engine_config=critic_cfg.engine,
                optimizer_config=critic_cfg.optim,
                checkpoint_config=critic_cfg.checkpoint,
            )
            pool = trainer.resource_pool_manager.get_resource_pool(Role.Critic)
            probe = RayClassWithInitArgs(cls=ray.remote(CriticProbe), config=worker_cfg)
            class_dict = {str(Role.Critic): probe}
            group = RayWorkerGroup(
                resource_pool=pool,
                ray_cls_with_init=create_colocated_worker_cls(class_dict=class_dict),
                device_name=config.trainer.device,
            )
            critic_wg = group.spawn(prefix_set=class_dict.keys())[str(Role.Critic)]
            workers = critic_wg.load_discriminator(torch.load(INPUTS))
            with open(RESULTS, "w") as out:
                json.dump({"runner_pid": os.getpid(), "workers": workers}, out)

            # the V1 trainer's logging (trainer_base.fit), then a complete final checkpoint
            trainer = config.trainer
            backends = list(trainer.logger)
            tracking = Tracking(trainer.project_name, trainer.experiment_name, default_backend=backends)
            for step in range(1, trainer.total_training_steps + 1):
                tracking.log({"critic/score/mean": step / 10, "response_length/mean": 90.0 + step}, step=step)
            tracking.finish()
            checkpoints = Path(trainer.default_local_dir)
            (checkpoints / f"global_step_{trainer.total_training_steps}" / "actor").mkdir(parents=True)
            (checkpoints / "latest_checkpointed_iteration.txt").write_text(str(trainer.total_training_steps))

    run_ppo(compose(OVERRIDES, align.CONFIG_NAME, align.CONFIG_DIR), task_runner_class=CriticRunner)
"""


@pytest.fixture(scope="module")
def scored_inputs(tiny_dir, disc_dir, tmp_path_factory):
    """A teacher caption and reasoning, rendered as the CPU engine scores them, and their scores."""
    from prism.core.modeling import load_processor
    from prism.core.segments import parse_response
    from prism.data import synthetic

    example = synthetic.examples(1, seed=5)[0]
    teacher = parse_response(example.teacher_response())
    image = example.scene.image()
    inputs = render(
        load_processor(str(tiny_dir)),
        [example.question] * 2,
        [image] * 2,
        [teacher.caption, teacher.reasoning],
    )
    inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad():
        expected = Discriminator.load(disc_dir).eval()(inputs)
    path = tmp_path_factory.mktemp("critic") / "inputs.pt"
    torch.save(inputs, path)
    return path, expected


def run_stage2(cluster, scored_inputs, paper_config, tiny_dir, disc_dir, tmp_path, monkeypatch, **extra):
    """Stage 2 as the align job runs it (run.py, our rendered settings), on this cluster: RAY_ADDRESS set."""
    for name in ("model", "data"):
        write_manifest(tmp_path / name / "manifest.json", name, [], {})
    config = load_config(paper_config).align.stage_slice() | {"steps": 3}
    args = SimpleNamespace(
        config=config,
        model=tiny_dir,
        data=tmp_path / "data",
        out=tmp_path / "out",
        work=tmp_path / "work",
        nodes=1,
        gpus_per_node=GPUS,
        inputs=[tmp_path / "model", tmp_path / "data"],
    )
    monkeypatch.setattr(run, "export_actor", lambda actor, out: None)  # verl.model_merger: tested apart
    for key, value in cluster.items():
        monkeypatch.setenv(key, value)
    settings = align_settings(config, run.trainer_job(args, "align-test"), disc_dir) | extra
    settings["trainer.device"] = "cuda"  # the fake GPUs: auto_set_device is the entry point's, not run_ppo's
    entry = ["-c", textwrap.dedent(STAGE2_DRIVER), str(scored_inputs[0]), str(tmp_path / "workers.json")]
    run.run_verl(args, "align", entry, settings, align.CONFIG_NAME, align.CONFIG_DIR)
    return args, json.loads((tmp_path / "workers.json").read_text())


def test_stage2_critic_workers_load_the_warmed_discriminator_and_the_step_log_reaches_the_manifest(
    cluster, scored_inputs, paper_config, tiny_dir, disc_dir, tmp_path, monkeypatch
):
    args, out = run_stage2(cluster, scored_inputs, paper_config, tiny_dir, disc_dir, tmp_path, monkeypatch)
    workers = out["workers"]
    assert len(workers) == GPUS and len({w["pid"] for w in workers} | {out["runner_pid"], os.getpid()}) == 4
    _, expected = scored_inputs
    for worker in workers:  # our class, its head the warmed one: the scores the CPU engine computes
        assert worker["class"] == "PrismQwen3VLForTokenClassification"
        assert torch.allclose(torch.tensor(worker["scores"]), expected, atol=1e-5)
        # the discriminator's token budget (the authors' 8192) is what its engine batches by
        assert worker["budgets"] == [8192, 8192] and worker["dynamic"] is True

    # what the TaskRunner actor logged is what the manifest and the curves hold
    manifest = json.loads((args.out / "manifest.json").read_text())
    assert manifest["metrics"]["critic/score/mean"] == pytest.approx(0.3)
    assert manifest["metrics"]["response_length/mean"] == pytest.approx(93.0)
    curve = (args.out / "metrics.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in curve[1:]] == ["1", "2", "3"]
    assert [p.name for p in args.work.glob("steps-*.jsonl")] == ["steps-001.jsonl"]


def test_a_class_registered_only_where_the_config_is_built_does_not_reach_the_workers(
    cluster, scored_inputs, paper_config, tiny_dir, disc_dir, tmp_path, monkeypatch, capfd
):
    """Without the workers' own import, the TaskRunner has the class (critic.model.external_lib) but the
    workers do not: verl's loader gives up on token classification and asks for trl."""
    unset = {"~ray_kwargs.ray_init.runtime_env.env_vars.VERL_USE_EXTERNAL_MODULES": align.MODELS_MODULE}
    with pytest.raises(SystemExit, match="verl exited with status 1"):
        run_stage2(cluster, scored_inputs, paper_config, tiny_dir, disc_dir, tmp_path, monkeypatch, **unset)
    assert "is not a value head model, please install trl" in capfd.readouterr().err
