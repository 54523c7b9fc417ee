"""The plan: job counts per stage for the paper, tiny and a reduced config, and the exact sbatch flags
the Slurm executor plugin builds from our GPU rules."""

import logging
import shlex
from collections import Counter
from types import SimpleNamespace
from unittest import mock

import pytest

from conftest import ROOT, write_config
from prism.cluster.plan import plan_jobs, summarize, with_dag_jobs

PAPER_JOBS = {
    "fetch_model": 4,  # two policies, the discriminator base, the judge
    "fetch_dataset": 4,
    "prepare_dataset": 4,
    "fetch_benchmarks": 1,
    "sft": 2,
    "upcycle": 1,
    "warmup_discriminator": 1,
    "align": 2,
    "rl": 12,
    "evaluate_benchmark": 18 * 7,  # one job per variant and benchmark
    "evaluate": 18,  # each variant's records side by side, locally
    "tables": 1,
}


def counts(jobs) -> dict:
    return dict(Counter(job.rule for job in jobs))


def test_paper_plan_lists_every_job_with_gpu_hours():
    jobs = plan_jobs(ROOT, targets=["results/tables/main.csv"], forceall=True)
    assert counts(jobs) == PAPER_JOBS
    rl = [j for j in jobs if j.rule == "rl"]
    assert {(j.gpus, j.nodes, j.hours, j.local) for j in rl} == {(8, 1, 72.0, False)}
    local = ("fetch_model", "fetch_dataset", "fetch_benchmarks", "tables")
    assert all(j.local for j in jobs if j.rule in local)
    prepare = {(j.local, j.gpus, j.mem_mb) for j in jobs if j.rule == "prepare_dataset"}
    assert prepare == {(False, 0, 32000)}  # a Slurm CPU job with data.resources, not the login node
    table = summarize(jobs)
    assert "rl" in table and "6912.0" in table  # 12 runs x 8 GPUs x 72 h
    assert table.splitlines()[-1].split()[:2] == ["total", "176"]


def test_every_ablation_row_adds_its_own_chain_to_the_paper_plan_of_its_own_target(workflow_copy):
    settings = ["dense_discriminator", "text_only_discriminator", "no_sft", "no_alignment", "sft_subset"]
    overlay = write_config(workflow_copy, "ablations.yaml", {"ablations": {"settings": settings}})
    main = plan_jobs(workflow_copy, [overlay], ["results/tables/main.csv"], forceall=True)
    assert counts(main) == PAPER_JOBS  # the main table waits on no ablation chain
    tables = ["results/tables/main.csv", "results/tables/ablations.csv"]
    jobs = plan_jobs(workflow_copy, [overlay], tables, forceall=True)
    added = Counter(counts(jobs)) - Counter(PAPER_JOBS)
    assert added == {
        "ablation_tables": 1,
        "prepare_sft_subset": 1,
        "sft_subset": 1,
        "warmup_dense_discriminator": 1,
        "warmup_text_only_discriminator": 1,
        "align_ablation": 4,  # no_alignment reuses the main sft-grpo run
        "rl_ablation": 4,
        "evaluate_benchmark": 4 * 7,
        "evaluate": 4,
    }
    assert all(j.local for j in jobs if j.rule == "prepare_sft_subset")
    subset = next(j for j in jobs if j.rule == "prepare_sft_subset")
    assert subset.wildcards == {"dataset": "sft"}
    assert summarize(jobs).splitlines()[-1].split() == ["total", "221", "14936.0"]


def test_tiny_plan_runs_the_same_stages_on_synthetic_inputs():
    jobs = plan_jobs(ROOT, [ROOT / "config/tiny.yaml"], ["tiny/results/tables/main.csv"], forceall=True)
    assert counts(jobs) == {
        "fetch_model": 2,
        "fetch_dataset": 4,
        "prepare_dataset": 4,
        "make_benchmarks": 1,
        "sft": 1,
        "upcycle": 1,
        "warmup_discriminator": 1,
        "align": 1,
        "rl": 6,
        "evaluate": 9,  # the table's rows
        "tables": 1,
    }
    ablations = plan_jobs(
        ROOT, [ROOT / "config/tiny.yaml"], ["tiny/results/tables/ablations.csv"], forceall=True
    )
    shared = {rule: n for rule, n in counts(jobs).items() if rule not in ("rl", "evaluate", "tables")}
    assert counts(ablations) == shared | {
        "prepare_sft_subset": 1,
        "sft_subset": 1,
        "warmup_dense_discriminator": 1,
        "warmup_text_only_discriminator": 1,
        "align_ablation": 4,
        "rl": 2,  # the full recipe's prism-grpo and no_alignment's sft-grpo
        "rl_ablation": 4,
        "evaluate": 2 + 4,  # those two and the four trained ablation rows
        "ablation_tables": 1,
    }


def test_tiny_jobs_on_the_longest_chain_start_first():
    """With 2 cores, Snakemake starts the ready job of highest priority first: what the policy's SFT needs
    before the discriminator's chain, alignment before RL, the evaluations last."""
    priority = with_dag_jobs(
        ROOT,
        [ROOT / "config/tiny.yaml"],
        ["tiny/results/tables/main.csv"],
        True,
        lambda jobs: {  # as Snakemake's DAG expands a rule's priority for a job
            (j.rule.name, *j.wildcards_dict.values()): j.rule.expand_priority(j.wildcards_dict, j.input, 1)
            for j in jobs
        },
    )
    chain = [
        ("fetch_model", "tiny-policy"),
        ("sft", "tiny"),
        ("align", "tiny"),
        ("rl", "tiny", "prism", "grpo"),
        ("evaluate", "tiny", "prism-grpo"),
    ]
    assert [priority[job] for job in chain] == sorted((priority[job] for job in chain), reverse=True)
    assert len({priority[job] for job in chain}) == len(chain)
    assert priority[("fetch_dataset", "sft")] > priority[("fetch_model", "tiny-disc-base")]
    assert priority[("prepare_dataset", "sft")] > priority[("upcycle",)] > priority[("align", "tiny")]
    assert priority[("prepare_dataset", "rl")] > priority[("rl", "tiny", "sft", "dapo")]
    assert (
        max(p for job, p in priority.items() if job[0] == "evaluate")
        < priority[("rl", "tiny", "sft", "dapo")]
    )


def test_reduced_config_and_released_checkpoints_shrink_the_plan(workflow_copy):
    overlay = write_config(
        workflow_copy,
        "reduced.yaml",
        {
            "policies": [{"name": "qwen3-vl-4b", "model": "qwen3-vl-4b", "paper_name": "Qwen3-VL-4B"}],
            "rl": {"algorithms": ["grpo"]},
            "eval": {"variants": ["sft", "prism", "prism-grpo"], "benchmarks": ["mathvista", "mmmu"]},
            "sft": {"source": "released"},
            "discriminator": {"source": "released"},
        },
    )
    jobs = plan_jobs(workflow_copy, [overlay], ["results/tables/main.csv"], forceall=True)
    assert counts(jobs) == {
        "fetch_model": 2,  # the judge, and the policy's base model: its tokenizer measures the align set
        "fetch_dataset": 2,
        "prepare_dataset": 2,
        "fetch_released": 2,
        "fetch_benchmarks": 1,
        "align": 1,
        "rl": 1,
        "evaluate_benchmark": 3 * 2,
        "evaluate": 3,
        "tables": 1,
    }


def test_released_sft_drops_the_sft_jobs_and_the_downloads_only_they_needed(workflow_copy):
    overlay = write_config(workflow_copy, "released-sft.yaml", {"sft": {"source": "released"}})
    jobs = plan_jobs(workflow_copy, [overlay], ["results/tables/main.csv"], forceall=True)
    built = plan_jobs(workflow_copy, [], ["results/tables/main.csv"], forceall=True)
    dropped = Counter((j.rule, j.wildcards.get("dataset")) for j in built) - Counter(
        (j.rule, j.wildcards.get("dataset")) for j in jobs
    )
    # the base models stay: the instruct rows evaluate them
    assert dropped == {("sft", None): 2, ("fetch_dataset", "sft"): 1, ("prepare_dataset", "sft"): 1}
    fetched = {j.wildcards["slug"] for j in jobs if j.rule == "fetch_released"}
    assert fetched == {"prism-vlm--Qwen3-VL-4B-Instruct-SFT", "prism-vlm--Qwen3-VL-8B-Instruct-SFT"}


def test_released_config_plans_only_downloads_evaluations_and_tables():
    jobs = plan_jobs(ROOT, [ROOT / "config" / "released.yaml"], ["results/tables/main.csv"], forceall=True)
    assert counts(jobs) == {
        "fetch_model": 2,  # the base model and the judge
        "fetch_released": 5,
        "fetch_benchmarks": 1,
        "evaluate_benchmark": 6 * 7,
        "evaluate": 6,
        "tables": 1,
    }
    # 6 variants x 8 GPUs x the 7 benchmarks' 14.5 h
    assert summarize(jobs).splitlines()[-1].split() == ["total", "57", "696.0"]


def sbatch_flags(workflow_dir, configfiles=()) -> dict[str, list[str]]:
    """The resource flags of each GPU rule's sbatch line, built by the plugin's own code (Slurm mocked)."""
    import snakemake_executor_plugin_slurm as plugin
    from snakemake_executor_plugin_slurm import Executor, ExecutorSettings
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    def flags(job) -> list[str]:
        executor = SimpleNamespace(
            _partitions=None,
            _fallback_account_arg=None,
            _fallback_partition=None,
            logger=logging.getLogger("test"),
        )
        with (
            mock.patch.object(plugin, "validate_account", lambda account, log: account),
            mock.patch.object(plugin, "get_account", lambda log: None),
            mock.patch.object(plugin, "get_default_partition", lambda job, log: ""),
        ):
            account = next(Executor.get_account_arg(executor, job))
            partition = Executor.get_partition_arg(executor, job)
        params = {
            "run_uuid": "UUID",
            "slurm_logfile": "log",
            "comment_str": "c",
            "account": account,
            "partition": partition,
            "workdir": ".",
        }
        call = get_submit_command(job, params, settings=ExecutorSettings(), failed_nodes=set())
        tokens = shlex.split(call + set_gres_string(job))
        keep, i = [], 0
        while i < len(tokens):
            if tokens[i] in ("--job-name", "--output", "--comment", "-D"):
                i += 2
                continue
            if tokens[i] in ("-A", "-p", "-t", "--mem"):
                keep.append(f"{tokens[i]} {tokens[i + 1]}")
                i += 2
                continue
            if tokens[i] not in ("sbatch", "--parsable", "--export=ALL"):
                keep.append(tokens[i])
            i += 1
        return keep

    return with_dag_jobs(
        workflow_dir,
        configfiles,
        ["results/tables/main.csv"],
        True,
        lambda jobs: {j.rule.name: flags(j) for j in jobs if not j.is_local},
    )


def test_gpu_rule_requests_eight_h100_with_explicit_memory_time_and_cpus(workflow_copy):
    overlay = write_config(workflow_copy, "account.yaml", {"cluster": {"account": "proj42"}})
    flags = sbatch_flags(workflow_copy, [overlay])
    assert flags["sft"] == [
        "-A proj42",
        "-p gpu",
        "-t 2880",
        "--mem 800000",
        "--cpus-per-task=64",
        "--gpus=h100:8",
    ]
    assert not any(flag.startswith("--gpus") for flag in flags["upcycle"])  # a CPU job


def test_multi_node_rule_gets_nodes_per_node_gres_and_one_task_per_node(workflow_copy):
    overlay = write_config(
        workflow_copy,
        "multinode.yaml",
        {
            "rl": {"resources": {"gpus": 16, "nodes": 2, "hours": 24, "mem_mb": 800000, "cpus_per_task": 96}},
        },
    )
    flags = sbatch_flags(workflow_copy, [overlay])
    assert flags["rl"] == [
        "-p gpu",
        "-t 1440",
        "--mem 800000",
        "--nodes=2",
        "--ntasks=2",
        "--cpus-per-task=96",
        "--gres=gpu:h100:8",
    ]
    assert not any(f.startswith("--ntasks-per-gpu") for f in flags["rl"])


@pytest.mark.parametrize("configfile", [[], [ROOT / "config/tiny.yaml"]])
def test_dry_run_is_fast_and_needs_no_gpu(configfile):
    import time

    start = time.process_time()  # this process's CPU, so a loaded machine does not fail it
    plan_jobs(ROOT, configfile, ["all"], forceall=True)
    assert time.process_time() - start < 10


def test_warmup_runs_one_process_in_tiny_mode_and_accelerate_with_zero2_on_the_cluster():
    import json

    def launcher(configfiles):
        return with_dag_jobs(
            ROOT,
            configfiles,
            ["all"],
            True,
            lambda jobs: next(j.params.launcher for j in jobs if j.rule.name == "warmup_discriminator"),
        )

    assert launcher([ROOT / "config/tiny.yaml"]) == "python"
    paper = launcher([])
    assert paper == (
        "accelerate launch --num_processes 8 --num_machines 1 --mixed_precision bf16 --use_deepspeed "
        f"--deepspeed_config_file {ROOT / 'prism/discriminator/ds_zero2.json'} "
        "--gradient_accumulation_steps 4"
    )
    zero = json.loads((ROOT / "prism/discriminator/ds_zero2.json").read_text())
    assert zero["zero_optimization"]["stage"] == 2 and zero["gradient_clipping"] == 1.0
